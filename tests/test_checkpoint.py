"""Checkpoint I/O: atomic writes, weights-only loads, CUDA checkpoints on CPU, foreign networks refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_weights, model_state


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("boom")


def test_interrupted_save_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, target)
    with pytest.raises(pickle.PicklingError):
        atomic_save({"model": {"w": torch.zeros(3)}, "bad": Unpicklable()}, target)
    assert torch.equal(load_checkpoint(target)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind


def test_cuda_saved_checkpoint_loads_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = torch.nn.Linear(3, 2)
    path = tmp_path / "cuda.pt"
    # write the file exactly as a CUDA run would: storages tagged with location 'cuda:0'
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"model": net.state_dict()}, path)
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            torch.load(path, weights_only=True)  # what users hit without map_location
    fresh = load_weights(torch.nn.Linear(3, 2), path)
    assert torch.equal(fresh.weight, net.weight) and fresh.weight.device.type == "cpu"


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": Path("x")}, path)  # arbitrary classes need full pickle
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_checkpoint_of_another_network_is_named(tmp_path: Path) -> None:
    path = atomic_save({"model": torch.nn.Linear(4, 2).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt.*do not fit this Linear"):
        load_weights(torch.nn.Linear(3, 2), path)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    path = atomic_save({"model": torch.nn.Linear(30, 20).state_dict()}, tmp_path / "cut.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_bare_and_ddp_state_dicts() -> None:
    sd = torch.nn.Linear(2, 2).state_dict()
    assert model_state(sd) is sd
    ddp = {f"module.{k}": v for k, v in sd.items()}
    assert set(model_state({"model": ddp})) == set(sd)
