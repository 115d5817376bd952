"""``common.data``: the disk cache (``--cache_dir``) gives every bundle's training loader exactly the items the
uncached loader gives, reads them from disk instead of decoding, and recomputes an item whose file changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import PersistentDataset

from common.data import file_stamp_hash, training_dataset

ROOT = Path(__file__).resolve().parents[1]

# the bundle's own synthetic generator, tiny: (command arguments, train.json overrides)
SYNTHETIC = {
    "brats_segmentation": (["--n_cases", "5", "--size", "[40,40,32]"], {"roi_size": [32, 32, 24]}),
    "luna16_detection": (
        ["--n_scans", "10", "--n_subsets", "10", "--size", "64", "64", "32", "--empty_fraction", "0"],
        {"patch_size": [32, 32, 16]},
    ),
    "cxr14_classification": (["--n_patients", "12", "--size", "64", "--n_dicom", "0"], {"image_size": 32}),
}


def test_file_stamp_hash_follows_the_files_an_item_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    item = {"image": [str(a), str(b)], "label": 3, "meta": {"note": "not a file"}}
    first = file_stamp_hash(item)
    assert file_stamp_hash(dict(item)) == first  # same item, same files: same key
    assert file_stamp_hash({**item, "label": 4}) != first  # another item
    st = b.stat()
    b.write_bytes(b"three")  # rewritten under the same name (inside a list): size and mtime change
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_stamp_hash(item) != first


def _parser(bundle: str, data: Path, cache_dir: Path | None) -> ConfigParser:
    from conftest import activate_bundle

    activate_bundle(ROOT / "bundles" / bundle)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(data.parent / "bundle"), "dataset_dir": str(data), "num_workers": 0})
    parser.update({**SYNTHETIC[bundle][1], "cache_dir": str(cache_dir) if cache_dir else None})
    parser.get_parsed_content("imports")
    return parser


def _items(dataset, n: int) -> list:
    dataset.transform.set_random_state(seed=7)
    return [dataset[i] for i in range(n)]


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key])), f"{where}: {key} differs"
            elif not isinstance(value, (dict, list)):
                assert value == b[key] or str(value) == str(b[key]), f"{where}: {key} {value!r} != {b[key]!r}"


@pytest.mark.parametrize("bundle", sorted(SYNTHETIC))
def test_disk_cache_gives_the_uncached_items_and_skips_decoding(bundle: str, tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "scripts.synthetic", "--out_dir", str(data), *SYNTHETIC[bundle][0]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, cwd=ROOT / "bundles" / bundle, check=True, capture_output=True, env=env)
    cache = tmp_path / "cache"

    plain = _parser(bundle, data, None).get_parsed_content("train#dataset")
    assert not isinstance(plain, PersistentDataset)
    n = min(3, len(plain))
    expected = _items(plain, n)

    decoded: list[int] = []
    original = PersistentDataset._pre_transform

    def counting(self, item):
        decoded.append(1)
        return original(self, item)

    monkeypatch.setattr(PersistentDataset, "_pre_transform", counting)
    first = _parser(bundle, data, cache).get_parsed_content("train#dataset")  # a fresh run: fills the cache
    assert isinstance(first, PersistentDataset)
    _assert_same(_items(first, n), expected, f"{bundle} first epoch")
    assert len(decoded) == n and len(list(cache.glob("*.pt"))) == n

    again = _parser(bundle, data, cache).get_parsed_content("train#dataset")  # the next run: reads the cache
    _assert_same(_items(again, n), expected, f"{bundle} from the cache")
    assert len(decoded) == n, "a cached item was decoded again"


def test_a_replaced_case_file_is_decoded_again(tmp_path: Path, monkeypatch) -> None:
    """A case file rewritten under the same name (a corrected download, a re-run of prepare) is not served stale."""
    src = tmp_path / "x.pt"
    torch.save(torch.zeros(3), src)

    def load(item):
        return {"x": torch.load(item["x"], weights_only=True)}

    from monai.transforms import Compose, Lambda

    transform = Compose([Lambda(load)])
    cache = tmp_path / "cache"
    assert torch.equal(training_dataset([{"x": str(src)}], transform, cache_dir=cache)[0]["x"], torch.zeros(3))
    st = src.stat()
    torch.save(torch.ones(3), src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert torch.equal(training_dataset([{"x": str(src)}], transform, cache_dir=cache)[0]["x"], torch.ones(3))
