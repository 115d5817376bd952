"""Atomic text/JSON writes: the old file survives a failed write and no temporary is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.files import atomic_write_text, write_json_atomic


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
