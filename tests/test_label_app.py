"""tools/label_app.py (``make label``) serves only weights that fit the network MONAI Label builds."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from common.checkpoint import load_checkpoint, load_weights
from tools import label_app

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = "brats_segmentation"


def _bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / BUNDLE
    shutil.copytree(ROOT / "bundles" / BUNDLE, dst, ignore=label_app.IGNORE)
    (dst / "models").mkdir()
    return dst


def _network_def(bundle: Path) -> torch.nn.Module:
    from conftest import activate_bundle

    activate_bundle(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.get_parsed_content("imports")
    return parser.get_parsed_content("network_def", instantiate=True)


def test_weights_that_do_not_fit_are_refused_with_the_reason(tmp_path: Path, capsys) -> None:
    bundle = _bundle_copy(tmp_path)
    torch.save({"model": torch.nn.Linear(4, 2).state_dict()}, bundle / "models" / "model.pt")
    status = label_app.weights(bundle, tmp_path / "app" / "model.pt")
    assert status.startswith("seeded random: REFUSED"), status
    assert str(bundle / "models" / "model.pt") in status
    assert "does not fit" in capsys.readouterr().err
    load_weights(_network_def(bundle), tmp_path / "app" / "model.pt", strict=True)  # what is served fits


def test_weights_that_fit_are_served_unchanged(tmp_path: Path) -> None:
    bundle = _bundle_copy(tmp_path)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in _network_def(bundle).state_dict().items()}
    torch.save({"model": state, "info": {"bundle": BUNDLE}}, bundle / "models" / "model.pt")
    status = label_app.weights(bundle, tmp_path / "app" / "model.pt")
    assert status == f"trained ({bundle / 'models' / 'model.pt'})"
    served = load_checkpoint(tmp_path / "app" / "model.pt")["model"]
    assert served.keys() == state.keys()
    assert all(torch.equal(served[k], state[k]) for k in state)
