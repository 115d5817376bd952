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


def test_fold_ensemble_is_served_where_monai_label_calls_the_inferer(tmp_path: Path) -> None:
    """``make label LABEL_ENSEMBLE=1``: MONAI Label parses ``inferer`` from the app's ``inference.json`` and calls
    ``inferer(image, network_of_model_pt)``; what it gets must be the fold ensemble with mirroring TTA: the mean over
    both folds and the 8 flips of each pass's sigmoid, each pass run by the bundle's own sliding-window inferer."""
    from conftest import activate_bundle

    src = ROOT / "bundles" / BUNDLE
    demo_models = tmp_path / "demo" / BUNDLE / "models"
    activate_bundle(src)
    parser = ConfigParser()
    parser.read_config([str(src / "configs" / "inference.json"), str(src / "configs" / "demo.json")])
    fp32_small = {"use_amp": False, "val_roi_size": [32, 24, 16]}  # exact float32 arithmetic, one window
    parser.update(fp32_small)
    parser.get_parsed_content("imports")
    nets = []
    for k in (0, 1):
        torch.manual_seed(k + 1)
        nets.append(parser.get_parsed_content("network_def", instantiate=True, lazy=False).eval())
        (demo_models / f"fold{k}").mkdir(parents=True)
        torch.save({"model": nets[-1].state_dict()}, demo_models / f"fold{k}" / "model.pt")
    plain_inferer = parser.get_parsed_content("inferer")

    copy = tmp_path / "app" / BUNDLE
    shutil.copytree(src, copy, ignore=label_app.IGNORE)
    shutil.copytree(ROOT / "common", copy / "common", ignore=label_app.IGNORE)
    label_app.merge_demo(copy)
    served = label_app.serve_ensemble(copy, demo_models)
    assert served["folds"] == ["models/fold0/model.pt", "models/fold1/model.pt"] and served["served_as"] == "inferer"
    app = ConfigParser()  # as MONAI Label's BundleInferTask reads it: the file alone, bundle_root set
    app.read_config(str(copy / "configs" / "inference.json"))
    app.config.update({"bundle_root": str(copy)})
    app.update(fp32_small)
    app.get_parsed_content("imports")
    inferer = app.get_parsed_content("inferer")

    torch.manual_seed(0)
    image = torch.randn(1, 4, 32, 24, 16)
    with torch.no_grad():
        got = torch.sigmoid(inferer(image, torch.nn.Identity()).float())  # the network MONAI Label passes is unused
        passes = []
        for net in nets:
            for n in range(4):
                for axes in __import__("itertools").combinations((2, 3, 4), n):
                    x = torch.flip(image, axes) if axes else image
                    out = torch.sigmoid(plain_inferer(x, net).float())
                    passes.append(torch.flip(out, axes) if axes else out)
    assert len(passes) == 16
    expected = torch.stack(passes).mean(0)
    single = torch.stack(passes[:8]).mean(0)
    assert (expected - single).abs().max() > 1e-3  # the second fold changes the result: it is really used
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_ensemble_without_fold_checkpoints_names_the_folder(tmp_path: Path) -> None:
    copy = tmp_path / "app" / BUNDLE
    shutil.copytree(ROOT / "bundles" / BUNDLE, copy, ignore=label_app.IGNORE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=f"no fold\\*/model.pt under {tmp_path / 'empty'}.*--fold k"):
        label_app.serve_ensemble(copy, tmp_path / "empty")
