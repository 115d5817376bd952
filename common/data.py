"""Training datasets that decode each volume once: in memory (``cache_rate``) or on disk (``cache_dir``).

Decoding ``.nii.gz`` / ``.mhd`` and resampling are the slow part of a 3D training loader (REFERENCE.md section 8:
on a GPU the CPU-side data pipeline, not the network, sets the pace). MONAI's ``CacheDataset`` keeps the
deterministic prefix of the transforms (everything before the first random transform) in memory, which a real
BraTS or LUNA16 training set does not fit; ``PersistentDataset`` keeps it on disk, computed on first use, so every
later epoch (and every later run) reads one uncompressed tensor file per case instead of decoding.

``training_dataset`` picks one from the config's ``cache_dir`` / ``cache_rate``. The disk cache's file names hash
each datalist item together with the size and modification time of every file it names (``file_stamp_hash``) and
the deterministic transforms' parameters (``transform_hash``): a case file replaced under the same name, or a
changed preprocessing setting, is recomputed instead of served stale. Cache files are written to a temporary name
and renamed (MONAI) and read with ``torch.load(weights_only=True)``, memory-mapped (``MappedPersistentDataset``).
The cache stores plain tensors: the deterministic prefix must not leave anything the random transforms need from
the image metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing


def _stamps(value: Any, out: list[list[Any]]) -> None:
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        try:
            if path.is_file():
                st = path.stat()
                out.append([str(path), st.st_size, st.st_mtime_ns])
        except OSError:  # a string that is not a usable path name (too long, bad characters)
            pass
    elif isinstance(value, dict):
        for v in value.values():
            _stamps(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _stamps(v, out)


def file_stamp_hash(item: Any) -> bytes:
    """MD5 (hex, as bytes) of a datalist item and of the size and modification time of every existing file it names
    (also inside nested lists and dicts): the cache key of ``PersistentDataset``."""
    stamps: list[list[Any]] = []
    _stamps(item, stamps)
    text = json.dumps([item, stamps], sort_keys=True, default=str)
    return hashlib.md5(text.encode()).hexdigest().encode()


def transform_hash(transforms: Sequence[Any]) -> bytes:
    """MONAI's ``pickle_hashing`` of the deterministic transforms (their parameters included); for a transform that
    cannot be pickled (a local function), a hash of each transform's attributes' ``repr``, which changes between
    processes when it holds an address: such a cache is recomputed by every run, never served stale."""
    try:
        return pickle_hashing(transforms)
    except (pickle.PicklingError, AttributeError, TypeError):
        text = repr([(type(t).__qualname__, sorted(vars(t).items(), key=str)) for t in transforms])
        return hashlib.md5(text.encode()).hexdigest().encode()


class MappedPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose cache hits are memory-mapped (``torch.load(mmap=True)``, copy-on-write): a random
    crop then reads only the pages it covers instead of the whole preprocessed volume (a BraTS case is ~250 MB as
    float32). Misses, writes and corrupt files are MONAI's own handling."""

    def _cachecheck(self, item_transformed: Any) -> Any:
        if self.cache_dir is not None:
            hashfile = self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"
            if hashfile.is_file():
                try:
                    return torch.load(hashfile, weights_only=True, mmap=True)
                except (RuntimeError, pickle.UnpicklingError):  # not a zip-format file, or damaged: MONAI decides
                    pass
        return super()._cachecheck(item_transformed)


def training_dataset(
    data: Sequence[Any],
    transform: Callable[..., Any],
    cache_rate: float = 0.0,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = 1,
    progress: bool = True,
) -> Dataset:
    """``PersistentDataset`` in ``cache_dir`` when given (created if missing), else ``CacheDataset`` with
    ``cache_rate`` (0: nothing cached, every epoch decodes every case)."""
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return MappedPersistentDataset(
            data, transform, cache_dir=cache_dir, hash_func=file_stamp_hash, hash_transform=transform_hash
        )
    return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress)
