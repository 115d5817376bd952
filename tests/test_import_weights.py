"""tools/import_weights.py around the mapping itself (the mappings are tested per bundle, against the publishers'
own pipelines): how publishers' files are read, how wrong files are refused, and where the override configs layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from tools.import_weights import main
from tools.weights.publisher import WeightsImportError, check_keys, read_state_dict
from tools.weights.sources import BUNDLES, SOURCES

ROOT = Path(__file__).resolve().parents[1]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))


def test_state_dict_layouts_are_read_without_unpickling(tmp_path: Path) -> None:
    net = _net()
    expected = net.state_dict()
    layouts = {
        "bare.pt": expected,  # the model zoo's CheckpointSaver with one object
        "bundle.pt": {"model": expected, "info": {"bundle": "x"}},  # this collection's layout
        "ddp.pt": {f"module.{k}": v for k, v in expected.items()},  # saved from DistributedDataParallel
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        state = read_state_dict(tmp_path / name)
        assert state.keys() == expected.keys(), name
        assert all(torch.equal(state[k], expected[k]) for k in expected), name


def test_pickled_network_needs_the_flag(tmp_path: Path) -> None:
    net = _net()
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(
        WeightsImportError,
        match=r"whole\.pt: holds pickled Python objects \(torch\.nn\.modules\.container\.Sequential;.*--unsafe_unp",
    ):
        read_state_dict(tmp_path / "whole.pt")
    with pytest.warns(UserWarning, match=r"whole\.pt: full unpickling \(--unsafe_unpickle\) runs code"):
        state = read_state_dict(tmp_path / "whole.pt", unsafe_unpickle=True)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_foreign_files_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("not a checkpoint\n" * 20)
    with pytest.raises(WeightsImportError, match=r"notes\.pt: cannot be read as a PyTorch checkpoint"):
        read_state_dict(tmp_path / "notes.pt")
    with pytest.raises(WeightsImportError, match=r"absent\.pt: file not found"):
        read_state_dict(tmp_path / "absent.pt")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "training_state.pt")
    with pytest.raises(
        WeightsImportError, match=r"training_state\.pt: expected a state dict .*\['epoch', 'optimizer'\]"
    ):
        read_state_dict(tmp_path / "training_state.pt")
    with pytest.warns(FutureWarning):  # torch deprecates TorchScript; the model zoo still publishes model.ts
        torch.jit.save(torch.jit.script(_net().eval()), tmp_path / "model.ts")
    with pytest.raises(WeightsImportError, match=r"model\.ts: a TorchScript archive .* pass the state dict models/mod"):
        read_state_dict(tmp_path / "model.ts")


def test_key_check_names_missing_unexpected_and_shapes() -> None:
    expected = {"a.weight": (2, 3), "b.weight": (4,), "c.bias": (1,)}
    state = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(5), "z": torch.zeros(1)}
    with pytest.raises(WeightsImportError) as error:
        check_keys(state, expected, "f.pt", "the thing")
    assert str(error.value) == (
        "f.pt: not the thing: 1 of its 3 keys missing (e.g. c.bias); 1 unexpected keys (e.g. z); "
        "1 tensors of another shape (e.g. b.weight (5,) instead of (4,))"
    )
    check_keys({**state, "b.weight": torch.zeros(4), "c.bias": torch.zeros(1)}, expected, "f.pt", "x", optional=["z"])


def test_cli_reports_errors_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import conftest

    conftest.activate_bundle(BUNDLES / "brats_segmentation")  # one pytest process imports every bundle's scripts
    torch.save(_net().state_dict(), tmp_path / "small.pt")
    assert main(["model_zoo_brats", str(tmp_path / "small.pt"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "small.pt: not the MONAI model zoo's brats_mri_segmentation" in err
    assert "0.weight" in err and "convInit.conv.weight" in err  # what is there, and what was expected
    assert main(["model_zoo_brats", str(tmp_path / "small.pt"), str(tmp_path / "small.pt")]) == 2
    assert "would replace the publisher's file" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()
    assert main(["model_zoo_brats", str(tmp_path / "small.pt"), str(tmp_path / "o.pt"), "--variant", "nih"]) == 2


def _ids(config: dict, prefix: str = "") -> set[str]:
    """Every id of a config (``a``, ``a#b``, ``a#0#c``)."""
    found = set()
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else []
    for key, value in items:
        found.add(f"{prefix}{key}")
        found |= _ids(value, f"{prefix}{key}#")
    return found


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_overrides_layer_on_the_documented_configs(source: str) -> None:
    """Each override sets top-level ids, or nested ids its base configs have: on inference.json, and on train.json +
    evaluate.json (the evaluation command the import prints)."""
    spec = SOURCES[source]
    configs = BUNDLES / spec.bundle / "configs"
    override = json.loads((configs / spec.override).read_text())
    for files in (["inference.json"], ["train.json", "evaluate.json"]):
        merged: dict = {}
        for f in files:
            merged.update(json.loads((configs / f).read_text()))
        for key in override:
            parent = key.rsplit("#", 1)[0] if "#" in key else None
            assert parent is None or parent in _ids(merged), f"{spec.override}: {key!r} has no parent in {files}"


@pytest.mark.parametrize("source", ["model_zoo_brats", "model_zoo_luna16"])
def test_model_zoo_override_builds_one_network_for_inference_and_evaluation(source: str) -> None:
    spec = SOURCES[source]
    configs = BUNDLES / spec.bundle / "configs"
    import conftest

    conftest.activate_bundle(BUNDLES / spec.bundle)
    shapes = []
    for files in (["inference.json"], ["train.json", "evaluate.json"]):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in [*files, spec.override]])
        parser.update({"bundle_root": str(BUNDLES / spec.bundle)})
        parser.get_parsed_content("imports")
        net = parser.get_parsed_content("network_def", instantiate=True)
        shapes.append({k: tuple(v.shape) for k, v in net.state_dict().items()})
        assert not parser.get_parsed_content("amp").enabled
    assert shapes[0] == shapes[1]
