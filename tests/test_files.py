"""Atomic text/JSON writes: the old file survives a failed write and no temporary is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.files import atomic_path, atomic_write_text, write_json_atomic


def test_json_round_trip_and_parent_created(tmp_path: Path) -> None:
    target = write_json_atomic({"a": [1, 2]}, tmp_path / "new" / "datalist.json")
    assert json.loads(target.read_text()) == {"a": [1, 2]}


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = atomic_write_text("old", tmp_path / "results.json")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("common.files.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text("new", target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_path_keeps_the_suffix_and_replaces_on_success(tmp_path: Path) -> None:
    """nibabel picks gzip from the name: the temporary path must end with the target's own name."""
    import nibabel as nib
    import numpy as np

    target = tmp_path / "sub" / "case_seg.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith("_case_seg.nii.gz") and tmp != target
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)), str(tmp))
    assert target.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic: the writer saw the .gz suffix
    assert sorted(p.name for p in target.parent.iterdir()) == ["case_seg.nii.gz"]


def test_atomic_path_failure_keeps_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """Outputs get the mode any new file gets (0644 under umask 022), not mkstemp's private 0600: segmentations
    and CSVs on a shared server must be readable by the other users the umask allows."""
    import os
    import stat

    old = os.umask(umask)
    try:
        text = atomic_write_text("x", tmp_path / "metrics.csv")
        with atomic_path(tmp_path / "seg.nii.gz") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for path in (text, tmp_path / "seg.nii.gz"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
