"""End-to-end on a tiny generated dataset: train 1 epoch, evaluate, infer (PNG == DICOM), bad inputs,
pretrained-weight transfer, and the 2-process torchrun (gloo, CPU) training."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import run, verify_net_in_out

from benchmarks.scoring import auroc_mann_whitney, read_nih_labels
from common.checkpoint import CheckpointError, load_checkpoint
from scripts.labels import LABELS
from scripts.networks import cxr_network
from scripts.synthetic import generate

BUNDLE = Path(__file__).resolve().parents[1]
TINY = {"image_size": 64, "num_workers": 0, "batch_size": 8, "max_epochs": 1, "val_fraction": 0.25}


def _configs(*names: str) -> list[str]:
    return [str(BUNDLE / "configs" / n) for n in names]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr14_flow")
    data = generate(root / "data", n_patients=14, size=64, seed=5, n_dicom=3)
    out = root / "run"
    run(
        "training", config_file=_configs("train.json", "demo.json"), dataset_dir=str(data), bundle_root=str(out), **TINY
    )
    return data, out


def test_training_saves_checkpoint(trained):
    _, out = trained
    ckpt = load_checkpoint(out / "models" / "model.pt")
    assert "model" in ckpt and "features.conv0.weight" in ckpt["model"]
    datalist = json.loads((out / "data" / "datalist.json").read_text())
    assert datalist["labels"] == list(LABELS)


def test_evaluate_writes_metrics(trained):
    data, out = trained
    run(
        "evaluating",
        config_file=_configs("train.json", "demo.json", "evaluate.json"),
        dataset_dir=str(data),
        bundle_root=str(out),
        **TINY,
    )
    report = json.loads((out / "eval" / "metrics.json").read_text())
    assert [r["label"] for r in report["labels"]] == list(LABELS)
    n_test = len((data / "test_list.txt").read_text().split())
    assert report["summary"]["n_test_images"] == n_test
    # every figure recomputed independently (benchmarks/scoring.py) from test_predictions.csv, with the truth read
    # by label NAME from Data_Entry_2017.csv: AUROC, and sensitivity/specificity at the reported threshold
    truth = read_nih_labels(data / "Data_Entry_2017.csv", LABELS)
    with open(out / "eval" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["image"]).name for r in rows) == sorted((data / "test_list.txt").read_text().split())
    for r in report["labels"]:
        name = r["label"]
        p = np.array([float(row[f"p_{name}"]) for row in rows])
        y = np.array([truth[Path(row["image"]).name][name] for row in rows])
        assert (r["n_positive"], r["n_negative"]) == (int(y.sum()), int(len(y) - y.sum()))
        expected = auroc_mann_whitney(p, y)
        assert (np.isnan(r["auroc"]) and np.isnan(expected)) or r["auroc"] == pytest.approx(expected, abs=1e-6), name
        predicted = p >= r["threshold"]
        if y.any():
            assert r["sensitivity"] == pytest.approx((predicted & (y == 1)).sum() / y.sum()), name
        if (y == 0).any():
            assert r["specificity"] == pytest.approx((~predicted & (y == 0)).sum() / (y == 0).sum()), name
    assert report["summary"]["auroc"] == pytest.approx(np.nanmean([r["auroc"] for r in report["labels"]]))
    with open(out / "eval" / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 14
    assert (out / "eval" / "roc_curves.png").stat().st_size > 1000


def _infer(folder: Path, out: Path, **extra) -> list[dict[str, str]]:
    run(
        "run",
        config_file=_configs("inference.json", "demo.json"),
        dataset_dir=str(folder),
        bundle_root=str(out),
        image_size=64,
        **extra,
    )
    with open(out / "eval" / "predictions.csv") as f:
        return list(csv.DictReader(f))


def test_inference_png_and_dicom_agree(trained, tmp_path):
    data, out = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for dcm in sorted((data / "dicom").glob("*.dcm")):  # 3 encodings: rescale+window, MONOCHROME1, 16-bit
        shutil.copy(dcm, folder / dcm.name)
        shutil.copy(next(data.glob(f"images_*/images/{dcm.stem}.png")), folder / f"{dcm.stem}.png")
    rows = _infer(folder, out, gradcam_top_k=1)
    assert len(rows) == 6 and list(rows[0]) == ["image", *LABELS]
    probs = {Path(r["image"]).name: np.array([float(r[n]) for n in LABELS]) for r in rows}
    assert all(((p >= 0) & (p <= 1)).all() for p in probs.values())
    for dcm in (data / "dicom").glob("*.dcm"):
        np.testing.assert_allclose(probs[dcm.name], probs[f"{dcm.stem}.png"], atol=2e-3)
    assert len(list((out / "eval" / "gradcam").glob("*_gradcam.png"))) == 6


def test_localising_scores_every_boxed_test_finding(trained, tmp_path):
    """``localising`` (configs/localisation.json on inference.json) scores Grad-CAM of each boxed finding of the
    test list against BBox_List_2017.csv, with the random baseline equal to each finding's box area fraction."""
    data, out = trained
    run(
        "localising",
        config_file=_configs("inference.json", "localisation.json", "demo.json"),
        dataset_dir=str(data),
        bundle_root=str(out),
        output_dir=str(tmp_path),
        image_size=64,
        localisation_examples=["Nodule", "Effusion"],
    )
    report = json.loads((tmp_path / "localisation.json").read_text())
    test = set((data / "test_list.txt").read_text().split())
    with open(data / "BBox_List_2017.csv", newline="") as f:
        expected = {
            (r[0], {"Infiltrate": "Infiltration"}.get(r[1], r[1])) for r in list(csv.reader(f))[1:] if r[0] in test
        }
    with open(tmp_path / "localisation_boxes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["image"], r["label"]) for r in rows} == expected and report["n_findings"] == len(rows) == len(expected)
    overall = report["all"]["random"]["overall"]
    assert overall["pointing_game"] == pytest.approx(np.mean([float(r["area_fraction"]) for r in rows]))
    assert overall["energy_in_box"] == overall["pointing_game"]
    gradcam = report["all"]["gradcam:class_layers.relu"]
    assert 0 <= gradcam["overall"]["pointing_game"] <= 1 and 0 <= gradcam["overall"]["energy_in_box"] <= 1
    lo, hi = gradcam["minus_random"]["energy_in_box"]["ci95"]
    assert lo <= gradcam["minus_random"]["energy_in_box"]["mean"] <= hi
    assert report["weights"] == str(out / "models" / "model.pt") and report["grid"] == [64, 64]
    drawn = {label for _, label in expected} & {"Nodule", "Effusion"}
    examples = {p.name for p in tmp_path.glob("localisation_example_*.png")}
    assert drawn and examples == {f"localisation_example_{x}.png" for x in drawn}


def test_inference_bad_file(trained, tmp_path):
    data, out = trained
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(next(data.glob("images_*/images/*.png")), folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(Exception) as err:
        _infer(folder, out)
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any("broken.png" in m for m in chain)
    with pytest.warns(UserWarning, match="broken.png"):
        rows = _infer(folder, out, skip_bad=True)
    assert [Path(r["image"]).name for r in rows] == ["good.png"]


def test_verify_net_in_out():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        config_file=str(BUNDLE / "configs" / "inference.json"),
        n=1,
        any=1,
    )


def test_pretrained_transfer_and_freeze(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.densenet121(weights=None)
    torch.save(tv.state_dict(), tmp_path / "imagenet.pth")
    net = cxr_network("densenet121", pretrained_path=str(tmp_path / "imagenet.pth"), freeze=True)
    sd = net.state_dict()
    np.testing.assert_allclose(
        sd["features.conv0.weight"].numpy(),
        tv.features.conv0.weight.sum(1, keepdim=True).detach().numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    key = "features.denseblock2.denselayer3.layers.conv1.weight"
    assert torch.equal(sd[key], tv.state_dict()["features.denseblock2.denselayer3.conv1.weight"])
    assert sd["class_layers.out.weight"].shape == (14, 1024)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"class_layers.out.weight", "class_layers.out.bias"}
    torch.save({"model": {"x": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt"):
        cxr_network("small", pretrained_path=str(tmp_path / "other.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("nnodes", [1, 2])
def test_multi_gpu_train_torchrun(trained, tmp_path, torchrun, nnodes):
    """2 processes on gloo, on one node or as two nodes of one process each (RANK 1 with LOCAL_RANK 0): each rank
    trains its half of the training images and rank 0 alone saves an unwrapped checkpoint."""
    data, _ = trained
    out = tmp_path / "ddp"
    args = ["training", "--config_file", "['configs/train.json','configs/demo.json','configs/multi_gpu_train.json']"]
    args += ["--dataset_dir", str(data), "--bundle_root", str(out)]
    for k, v in TINY.items():
        args += [f"--{k}", str(v)]
    launch = torchrun(BUNDLE, args, nnodes=nnodes, nproc_per_node=2 // nnodes)
    ranks = launch.check_ranks(nnodes, 2 // nnodes)
    n_train = len(json.loads((out / "data" / "datalist.json").read_text())["training"])
    per_rank = -(-n_train // 2) // TINY["batch_size"]  # DistributedSampler pads to equal shards; drop_last
    assert [ranks[r]["iterations"] for r in (0, 1)] == [str(per_rank)] * 2, ranks
    state = load_checkpoint(out / "models" / "model.pt")["model"]
    assert "features.conv0.weight" in state and not any(k.startswith("module.") for k in state)


@pytest.mark.parametrize("workflow_type, files", [("train", ["train.json"]), ("infer", ["inference.json"])])
def test_required_bundle_properties(workflow_type, files, trained, tmp_path):
    from monai.bundle import ConfigWorkflow

    data, _ = trained
    workflow = ConfigWorkflow(
        config_file=_configs(*files),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        workflow_type=workflow_type,
        dataset_dir=str(data if workflow_type == "train" else data / "dicom"),
        bundle_root=str(tmp_path),
    )
    workflow.initialize()
    assert not workflow.check_properties()


def test_same_seed_same_weights(trained, tmp_path):
    """The benchmark's premise: the same seed on the same machine trains bit-identical weights."""
    data, _ = trained
    weights = []
    for name in ("a", "b"):
        out = tmp_path / name
        run("training", config_file=_configs("train.json", "demo.json"), dataset_dir=str(data), bundle_root=str(out),
            **TINY)  # fmt: skip
        weights.append(load_checkpoint(out / "models" / "model.pt")["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
