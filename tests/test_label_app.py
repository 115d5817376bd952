"""tools/label_app.py (``make label``) serves only weights that fit the network MONAI Label builds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
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


# what a BraTS label map holds, per edition (BraTS challenge documentation): 2018-2021 1 necrotic/non-enhancing core,
# 2 edema, 4 enhancing tumour (no 3); 2023+ 1 NETC, 2 SNFH (edema), 3 ET
@pytest.mark.parametrize("edition, enhancing", [("2021", "4"), ("2023", "3")])
def test_brats_segments_are_named_by_the_values_the_edition_writes(
    edition: str, enhancing: str, tmp_path: Path
) -> None:
    """MONAI Label's ``/info/`` names segments from the app copy's ``channel_def``: it must name the label values the
    BraTS inference writes for the config's ``default_edition``, not the network's TC/WT/ET channels 0/1/2 (a
    viewer then named every segment wrongly), and 3, not 4, is enhancing tumour in a 2023 map."""
    bundle = _bundle_copy(tmp_path)
    config = bundle / "configs" / "inference.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "default_edition": edition}, indent=4))
    expected = {"0": "background", "1": "necrotic tumour core", "2": "peritumoral edema", enhancing: "enhancing tumour"}
    assert label_app._name_brats_label_values(bundle) == expected
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == expected  # what MONAI Label reads


@pytest.mark.parametrize("bundle_name", ["brats_segmentation", "cxr14_classification", "luna16_detection"])
def test_demo_weights_are_served_with_the_demo_network(bundle_name: str, tmp_path: Path) -> None:
    """``make label LABEL_WEIGHTS=work_dirs/demo``: the app's copy gets configs/demo.json merged into inference.json
    and train.json (MONAI Label reads each alone), so a demo run's ``<bundle>/models/model.pt`` fits and is served
    as trained; without the merge the same file is refused (what ``make label`` did with demo weights)."""
    src = ROOT / "bundles" / bundle_name
    demo_run = tmp_path / "demo" / bundle_name / "models"
    demo_run.mkdir(parents=True)
    from conftest import activate_bundle

    activate_bundle(src)
    parser = ConfigParser()
    parser.read_config([str(src / "configs" / "inference.json"), str(src / "configs" / "demo.json")])
    parser.get_parsed_content("imports")
    torch.manual_seed(1)
    state = parser.get_parsed_content("network_def", instantiate=True).state_dict()
    torch.save({"model": state, "info": {"bundle": bundle_name}}, demo_run / "model.pt")

    plain = tmp_path / "plain" / bundle_name
    shutil.copytree(src, plain, ignore=label_app.IGNORE)
    assert label_app.weights(plain, tmp_path / "plain.pt", demo_run / "model.pt").startswith("seeded random: REFUSED")

    copy = tmp_path / "app" / bundle_name
    shutil.copytree(src, copy, ignore=label_app.IGNORE)
    assert label_app.merge_demo(copy) == ["inference.json", "train.json"]
    for name in ("inference.json", "train.json"):  # each file alone now holds the demo's ids
        merged = json.loads((copy / "configs" / name).read_text())
        demo = json.loads((src / "configs" / "demo.json").read_text())
        assert all(merged[k] == v for k, v in demo.items() if "#" not in k), name
    status = label_app.weights(copy, tmp_path / "served.pt", demo_run / "model.pt")
    assert status == f"trained ({demo_run / 'model.pt'})"
    served = load_checkpoint(tmp_path / "served.pt")["model"]
    assert all(torch.equal(served[k], state[k]) for k in state)
