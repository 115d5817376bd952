"""Checkpoints that survive interruption and move between devices, and the one checkpoint layout of every bundle.

A checkpoint is written to a temporary file beside its target and renamed over it, so an interrupted save
never leaves a half-written ``model.pt``. Loading always uses ``weights_only=True`` (no arbitrary pickle)
and ``map_location``, so a checkpoint saved on CUDA loads on a CPU-only machine.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.files import atomic_open

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the file named in the message."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name in the same folder, then rename over ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint file not found; train first (run id training), or pass --ckpt_path <file> "
            "(--bundle_root <dir> for the weights of a run elsewhere, e.g. the demo's work_dirs/demo/<bundle>)"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({e})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def model_state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The network weights in a checkpoint: the ``model`` entry (MONAI's layout) or the dict itself."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError("checkpoint 'model' entry is not a state dict")
    # weights saved from DistributedDataParallel carry a 'module.' prefix
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True
) -> torch.nn.Module:
    """Load network weights from ``path``; a checkpoint of another network is refused with a clear message."""
    state = model_state(load_checkpoint(path, map_location))
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        # one line, so that it can be the last line of a failed run (common.errors); torch's list is in the chain
        raise CheckpointError(
            f"{path}: weights do not fit this {network.__class__.__name__}: {_mismatch(network, state, strict, e)}; "
            f"{MISMATCH_HINT}"
        ) from e
    return network


MISMATCH_HINT = (
    "trained with configs/demo.json (or another override)? add the same file to --config_file "
    "(and the training run's folder as --bundle_root)"
)


def _mismatch(network: torch.nn.Module, state: Mapping[str, Any], strict: bool, error: Exception) -> str:
    """What differs between the network and the weights, counted, with the first example of each kind (missing and
    unexpected names only when ``strict``: otherwise ``load_state_dict`` accepts them)."""
    own = network.state_dict()

    def shape(tensors: Mapping[str, Any], k: str) -> list[int] | None:
        return list(tensors[k].shape) if hasattr(tensors[k], "shape") else None

    reshaped = [k for k in state if k in own and shape(state, k) != shape(own, k)]
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} tensors of another shape (first {k}: {shape(state, k)} in the file, "
            f"{shape(own, k)} in the network)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    return ", ".join(parts) or str(error).strip().splitlines()[0]


# ---------------------------------------------------------------- the checkpoint convention of every bundle
#
# models/model.pt                 the selected weights (best validation key metric), {"model": ..., "info": ...},
#                                 written by validate#handlers' CheckpointSaver; evaluate and inference load it with
#                                 load_weights(@network, @ckpt_path) (weights_only, map_location, clear errors);
#                                 MONAI Label reads it directly.
# models/checkpoint_epoch=N.pt    the full training state (network, optimizer, scheduler, trainer) after epoch N,
#                                 written by EpochCheckpoints; `--resume true` continues from the newest one.

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the largest N in ``ckpt_dir`` (written by ``EpochCheckpoints``)."""
    found = []
    for f in Path(ckpt_dir).glob("*checkpoint_epoch=*.pt"):
        m = CHECKPOINT_PATTERN.search(f.name)
        if m:
            found.append((int(m.group(1)), f))
    return max(found)[1] if found else None


class EpochCheckpoints:
    """Save the full training state every ``save_interval`` epochs and, when ``resume``, restart from the newest.

    The state is ``save_dict`` (network, optimizer, scheduler) plus the trainer itself (epoch/iteration), added at
    ``attach`` time because a config cannot reference the trainer from inside its own handlers. Saving goes through
    MONAI's ``CheckpointSaver`` (unwraps DistributedDataParallel, keeps the last ``n_saved`` files, rank 0 only);
    loading through ``CheckpointLoader`` (``weights_only=True``, ``map_location``). ``resume=True`` without a
    checkpoint starts from scratch (logged), so it is safe on a first run.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        save_dict: dict[str, Any],
        resume: bool = False,
        save_interval: int = 1,
        n_saved: int = 1,
        map_location: Any = "cpu",
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.resume = bool(resume)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.map_location = str(map_location) if isinstance(map_location, torch.device) else map_location
        self.loaded: Path | None = None

    def attach(self, engine: Any) -> None:
        from monai.handlers import CheckpointLoader, CheckpointSaver

        state = {**self.save_dict, "trainer": engine}
        if self.resume:
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                logger.warning(f"resume requested but no checkpoint_epoch=*.pt in {self.ckpt_dir}: starting fresh")
            else:
                CheckpointLoader(load_path=str(path), load_dict=state, map_location=self.map_location).attach(engine)
                self.loaded = path
                logger.info(f"resuming from {path}")
        rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
            torch.distributed.get_rank() == 0
        )
        if rank0 and self.save_interval > 0:
            CheckpointSaver(
                save_dir=str(self.ckpt_dir),
                save_dict=state,
                file_prefix="",
                save_interval=self.save_interval,
                epoch_level=True,
                n_saved=self.n_saved,
            ).attach(engine)


class CheckpointInfo:
    """What a ``model.pt`` holds besides the weights (``{"model": ..., "info": {...}}``): the bundle's name and the
    settings its network was built with, so that a reader can tell which configuration the weights fit.

    Also makes ignite save a dict: with a single object, ``CheckpointSaver`` writes a bare state dict.
    """

    def __init__(self, **info: Any) -> None:
        self.info = dict(info)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.info)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.info = dict(state)
