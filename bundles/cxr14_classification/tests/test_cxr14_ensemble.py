"""cxr14_classification: patient-level cross-validation folds, fold ensembles, horizontal-flip test-time augmentation,
out-of-fold validation for ensemble thresholds, and the ResNet-50 override.

A tiny generated set in the real NIH layout (64 px), CPU, fp32 (``use_amp`` off), seeded random small DenseNets as
fold checkpoints, so that probabilities computed here by hand can be compared with what the configs write.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.networks.nets import ResNet

from benchmarks.scoring import auroc_mann_whitney, read_nih_labels
from common.checkpoint import atomic_save, load_checkpoint, load_weights
from scripts.labels import LABELS
from scripts.networks import cxr_network
from scripts.prepare import out_of_fold, prepare_datalist
from scripts.synthetic import generate
from tests.helpers import bundle_workflow

BUNDLE = Path(__file__).resolve().parents[1]
TINY = {"image_size": 64, "num_workers": 0, "batch_size": 8, "max_epochs": 1, "use_amp": False}
INFER = {"image_size": 64, "num_workers": 0, "batch_size": 8, "use_amp": False}


def _configs(*names: str) -> list[str]:
    return [str(BUNDLE / "configs" / n) for n in names]


def _workflow(names: tuple[str, ...], workflow_type: str, run_id: str, **override) -> ConfigWorkflow:
    return bundle_workflow(BUNDLE, names, workflow_type, run_id, **override)


def _run(names: tuple[str, ...], workflow_type: str, run_id: str, **override) -> ConfigWorkflow:
    wf = _workflow(names, workflow_type, run_id, **override)
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("cxr14_folds") / "data", n_patients=40, size=64, seed=7, n_dicom=0)


def _official(data: Path) -> tuple[dict[str, str], set[str], set[str]]:
    """image name -> patient (read from Data_Entry_2017.csv here, not through prepare), train_val and test names."""
    with open(data / "Data_Entry_2017.csv", newline="") as f:
        patient = {row["Image Index"]: row["Patient ID"] for row in csv.DictReader(f)}
    lists = [set((data / f).read_text().split()) for f in ("train_val_list.txt", "test_list.txt")]
    return patient, lists[0], lists[1]


def _names(items: list[dict]) -> list[str]:
    return [Path(i["image"]).name for i in items]


# ---------------------------------------------------------------- folds


@pytest.mark.parametrize("num_folds", [2, 3, 5])
def test_folds_are_patient_level_cover_train_val_once_and_never_hold_a_test_image(data: Path, num_folds: int) -> None:
    patient, train_val, test = _official(data)
    train_val_patients = {patient[n] for n in train_val}
    validated: list[str] = []
    for k in range(num_folds):
        fold = prepare_datalist(data, fold=k, num_folds=num_folds)
        train, val = (_names(fold[p]) for p in ("training", "validation"))
        assert sorted(_names(fold["test"])) == sorted(test)  # the official test list, unchanged
        assert not (set(train) | set(val)) & test  # no test-list image in any fold
        assert sorted(train + val) == sorted(train_val)  # every train_val image on exactly one side
        train_p, val_p = {patient[n] for n in train}, {patient[n] for n in val}
        assert not train_p & val_p  # all images of a patient on one side
        assert abs(len(val_p) - len(train_val_patients) / num_folds) < 1  # near-equal patient counts
        assert fold["source"]["fold"] == k and fold["source"]["num_folds"] == num_folds
        validated += sorted(val_p)
    assert sorted(validated) == sorted(train_val_patients)  # each train_val patient validated exactly once


def test_folds_are_deterministic_seeded_and_out_of_fold_tags_match(data: Path) -> None:
    def val_patients(seed: int) -> list[list[str]]:
        return [sorted({i["patient"] for i in prepare_datalist(data, seed=seed, fold=k, num_folds=3)["validation"]})
                for k in range(3)]  # fmt: skip

    assert val_patients(3) == val_patients(3)
    assert val_patients(3) != val_patients(4)
    tagged = out_of_fold(prepare_datalist(data, seed=3), num_folds=3, seed=3)
    assert len(tagged) == len(_official(data)[1])
    for k, patients in enumerate(val_patients(3)):
        assert sorted({i["patient"] for i in tagged if i["fold"] == k}) == patients


@pytest.mark.parametrize("fold, num_folds", [(3, 3), (-1, 3), (0, 1), (1.0, 3), (True, 3), ("1", 3)])
def test_bad_fold_numbers_are_refused(data: Path, fold, num_folds) -> None:
    with pytest.raises(ValueError, match="fold"):
        prepare_datalist(data, fold=fold, num_folds=num_folds)


def test_more_folds_than_patients_names_the_dataset(data: Path) -> None:
    n = len({p for n, p in _official(data)[0].items() if n in _official(data)[1]})
    with pytest.raises(ValueError, match=rf"{n} train/val patients in {data} cannot make {n + 1} folds"):
        prepare_datalist(data, fold=0, num_folds=n + 1)


def test_fold_override_in_train_json(data: Path, tmp_path: Path) -> None:
    """``--fold 1 --num_folds 3``: that fold's datalist (written to data/fold1/), checkpoints to models/fold1/,
    outputs to eval/fold1/; evaluate.json loads models/fold1/model.pt and scores the official test list. Without
    ``--fold`` nothing changes: the val_fraction split, data/datalist.json, models/, eval/."""
    wf = _workflow(("train.json", "evaluate.json"), "train", "evaluating", dataset_dir=str(data),
                   bundle_root=str(tmp_path), fold=1, num_folds=3, **TINY)  # fmt: skip
    parsed = wf.parser.get_parsed_content
    expected = prepare_datalist(data, fold=1, num_folds=3)
    assert (
        parsed("ckpt_dir") == f"{tmp_path}/models/fold1" and parsed("ckpt_path") == f"{tmp_path}/models/fold1/model.pt"
    )
    assert parsed("output_dir") == f"{tmp_path}/eval/fold1"
    assert parsed("train#dataset#data") == expected["training"]
    assert parsed("validate#dataset#data") == expected["validation"]
    assert parsed("test#dataset#data") == expected["test"]
    assert json.loads((tmp_path / "data" / "fold1" / "datalist.json").read_text()) == expected

    default = _workflow(("train.json",), "train", "training", dataset_dir=str(data), bundle_root=str(tmp_path / "d"),
                        **TINY)  # fmt: skip
    single = prepare_datalist(data)
    assert default.parser.get_parsed_content("ckpt_dir") == f"{tmp_path}/d/models"
    assert default.parser.get_parsed_content("output_dir") == f"{tmp_path}/d/eval"
    assert default.parser.get_parsed_content("validate#dataset#data") == single["validation"]
    assert json.loads((tmp_path / "d" / "data" / "datalist.json").read_text()) == single
    assert "fold" not in single["source"] and single["source"]["val_fraction"] == 0.1


# ---------------------------------------------------------------- ensembles and TTA through the configs


def _small(seed: int, path: Path | None = None) -> torch.nn.Module:
    """A seeded random demo network (demo.json's ``arch: small``), saved as a checkpoint when ``path`` is given."""
    torch.manual_seed(seed)
    net = cxr_network("small")
    with torch.no_grad():
        net.class_layers.out.weight.mul_(4.0)  # spread the probabilities (unsaturated) so that models differ
    if path is not None:
        atomic_save({"model": net.state_dict()}, path)
    return net.eval()


@pytest.fixture
def images(data: Path, tmp_path: Path) -> Path:
    """A folder of 10 images, the input of the inference commands."""
    folder = tmp_path / "images"
    folder.mkdir()
    for png in sorted(data.glob("images_*/images/*.png"))[:10]:
        (folder / png.name).symlink_to(png)
    return folder


def _inputs(wf: ConfigWorkflow) -> tuple[list[str], torch.Tensor]:
    """The preprocessed input batch of an inference workflow (the bundle's own preprocessing, in file order)."""
    items = wf.parser.get_parsed_content("dataset#data")
    pre = wf.parser.get_parsed_content("preprocessing")
    return [i["image"] for i in items], torch.stack([pre(dict(i))["image"] for i in items])


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", *LABELS]
    return {r["image"]: np.array([float(r[n]) for n in LABELS]) for r in rows}


def _infer(names: tuple[str, ...], images: Path, root: Path, out: Path, **override) -> ConfigWorkflow:
    return _run(names, "infer", "run", dataset_dir=str(images), bundle_root=str(root), output_dir=str(out),
                **INFER, **override)  # fmt: skip


def test_ensemble_of_identical_folds_is_exactly_the_single_model(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    for k in range(3):
        _small(1, root / "models" / f"fold{k}" / "model.pt")
    files = ("inference.json", "demo.json")
    single = _infer(files, images, root, tmp_path / "single", ckpt_path=str(root / "models" / "fold0" / "model.pt"))
    wf = _infer((*files, "inference_ensemble.json"), images, root, tmp_path / "ensemble")
    assert len(wf.parser.get_parsed_content("ensemble_networks")) == 3
    plain_csv, ensemble_csv = ((tmp_path / d / "predictions.csv").read_text() for d in ("single", "ensemble"))
    assert ensemble_csv == plain_csv  # the same columns and the same digits
    paths, x = _inputs(wf)
    # bit for bit, in memory: inference.json's network with fold 0's weights, through its inferer, then the
    # sigmoid of each item as its postprocessing takes it (after decollating the batch)
    network = load_weights(single.parser.get_parsed_content("network"), root / "models" / "fold0" / "model.pt")
    with torch.no_grad():
        logits = single.parser.get_parsed_content("inferer")(x, network.eval())
        plain = torch.stack([torch.sigmoid(row) for row in logits])
        assert torch.equal(wf.parser.get_parsed_content("ensemble_inferer")(x, None), plain)


def test_ensemble_of_two_folds_is_the_mean_of_their_probabilities(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    nets = [_small(seed, root / "models" / f"fold{k}" / "model.pt") for k, seed in enumerate((2, 3))]
    wf = _infer(("inference.json", "demo.json", "inference_ensemble.json"), images, root, tmp_path / "out")
    got = _read_csv(tmp_path / "out" / "predictions.csv")
    paths, x = _inputs(wf)
    with torch.no_grad():
        each = [torch.sigmoid(n(x)).numpy() for n in nets]
    expected = (each[0] + each[1]) / 2
    assert np.abs(each[0] - each[1]).max() > 0.1  # the two folds really differ
    for i, path in enumerate(paths):
        np.testing.assert_allclose(got[path], expected[i], atol=1e-6, rtol=0)  # CSV: 6 decimals


def test_horizontal_flip_tta_is_the_mean_of_the_image_and_its_mirror(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    net = _small(4, root / "models" / "fold0" / "model.pt")
    _small(5, root / "models" / "fold1" / "model.pt")  # not used: --ckpt_paths picks fold 0
    wf = _infer(("inference.json", "demo.json", "inference_ensemble.json"), images, root, tmp_path / "out",
                tta=True, ckpt_paths=[str(root / "models" / "fold0" / "model.pt")])  # fmt: skip
    assert "1 model(s) x 2 flips" in wf.parser.get_parsed_content("ensemble_inferer").describe()
    got = _read_csv(tmp_path / "out" / "predictions.csv")
    paths, x = _inputs(wf)  # (N, 1, rows, cols): the mirror image reverses the columns
    with torch.no_grad():
        plain = torch.sigmoid(net(x)).numpy()
        mirrored = torch.sigmoid(net(x[..., torch.arange(x.shape[-1] - 1, -1, -1)])).numpy()
    assert np.abs(plain - mirrored).max() > 0.02  # the network is not left-right symmetric
    for i, path in enumerate(paths):
        np.testing.assert_allclose(got[path], (plain[i] + mirrored[i]) / 2, atol=1e-6, rtol=0)


def test_ensemble_inference_refuses_gradcam(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    _small(1, root / "models" / "fold0" / "model.pt")
    with pytest.raises(Exception) as err:
        _infer(("inference.json", "demo.json", "inference_ensemble.json"), images, root, tmp_path / "o",
               gradcam_top_k=2)  # fmt: skip
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("Grad-CAM shows one network" in m and "--gradcam_top_k 0" in m for m in chain), chain


def _report(folder: Path) -> tuple[dict, list[str], list[dict[str, str]]]:
    with open(folder / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    with open(folder / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return json.loads((folder / "metrics.json").read_text()), header, rows


def test_evaluate_ensemble_writes_evaluate_metrics_with_out_of_fold_thresholds(data: Path, tmp_path: Path) -> None:
    """evaluate_ensemble.json writes the files and keys of evaluate.json; its validation part (thresholds,
    val_auroc) is out-of-fold: each train/val image predicted by the fold model that validated on it, checked here
    against AUROCs computed independently; its test part is the ensemble; ``--fold k`` alone without TTA scores
    exactly what evaluate.json ``--fold k`` scores on the test list."""
    root = tmp_path / "run"
    nets = [_small(seed, root / "models" / f"fold{k}" / "model.pt") for k, seed in enumerate((6, 7))]
    common = {"dataset_dir": str(data), "bundle_root": str(root), "num_folds": 2, **TINY}
    base = ("train.json", "evaluate.json", "demo.json")
    _run(base, "train", "evaluating", fold=0, output_dir=str(tmp_path / "plain0"), **common)
    wf = _run((*base, "evaluate_ensemble.json"), "train", "evaluating", output_dir=str(tmp_path / "ens"), **common)
    _run((*base, "evaluate_ensemble.json"), "train", "evaluating", fold=0, output_dir=str(tmp_path / "ens0"),
         **common)  # fmt: skip

    plain, ens, ens0 = (_report(tmp_path / d) for d in ("plain0", "ens", "ens0"))
    for report, header, rows in (ens, ens0):
        assert report.keys() == plain[0].keys() and report["summary"].keys() == plain[0]["summary"].keys()
        assert [list(r) for r in report["labels"]] == [list(r) for r in plain[0]["labels"]]
        assert header == plain[1] and list(rows[0]) == list(plain[2][0])
    assert ens0[2] == plain[2]  # fold 0 alone: the same test probabilities, digit for digit
    assert [r["auroc"] for r in ens0[0]["labels"]] == [r["auroc"] for r in plain[0]["labels"]]

    # out-of-fold validation, by hand: fold k's network on the images of fold k's validation patients
    truth = read_nih_labels(data / "Data_Entry_2017.csv", LABELS)
    oof = out_of_fold(prepare_datalist(data), num_folds=2, seed=0)
    pre = wf.parser.get_parsed_content("validate#preprocessing")
    with torch.no_grad():
        probs = np.stack([torch.sigmoid(nets[i["fold"]](pre(dict(i))["image"][None]))[0].numpy() for i in oof])
    labels = np.array([[truth[Path(i["image"]).name][n] for n in LABELS] for i in oof])
    for j, row in enumerate(ens[0]["labels"]):
        expected = auroc_mann_whitney(probs[:, j], labels[:, j])
        assert (np.isnan(row["val_auroc"]) and np.isnan(expected)) or row["val_auroc"] == pytest.approx(expected)
    assert ens[0]["summary"]["n_val_images"] == len(oof) == len(_official(data)[1])

    # the test part: the mean of the two folds' probabilities
    test_items = prepare_datalist(data)["test"]
    with torch.no_grad():
        x = torch.stack([pre(dict(i))["image"] for i in test_items])
        expected = (torch.sigmoid(nets[0](x)) + torch.sigmoid(nets[1](x))).numpy() / 2
    got = {r["image"]: [float(r[f"p_{n}"]) for n in LABELS] for r in ens[2]}
    np.testing.assert_allclose([got[i["image"]] for i in test_items], expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- ResNet-50


def test_network_resnet50_trains_a_fold_and_infers(data: Path, images: Path, tmp_path: Path) -> None:
    """configs/network_resnet50.json (layered after demo.json) trains one tiny epoch of fold 1 of 2 into
    models/fold1/; the plain inference (with Grad-CAM at ``layer4``) and the ensemble inference load it."""
    root = tmp_path / "run"
    wf = _run(("train.json", "demo.json", "network_resnet50.json"), "train", "training", dataset_dir=str(data),
              bundle_root=str(root), fold=1, num_folds=2, **TINY)  # fmt: skip
    assert isinstance(wf.parser.get_parsed_content("network_def"), ResNet)
    n_train = len(json.loads((root / "data" / "fold1" / "datalist.json").read_text())["training"])
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == n_train // TINY["batch_size"]  # drop_last
    state = load_checkpoint(root / "models" / "fold1" / "model.pt")["model"]
    assert state["conv1.weight"].shape == (64, 1, 7, 7) and state["fc.weight"].shape == (14, 2048)
    assert not (root / "models" / "model.pt").exists()

    ckpt = str(root / "models" / "fold1" / "model.pt")
    plain = _infer(("inference.json", "demo.json", "network_resnet50.json"), images, root, tmp_path / "plain",
                   ckpt_path=ckpt, gradcam_top_k=1)  # fmt: skip
    assert plain.parser.get_parsed_content("gradcam_layer") == "layer4"
    ens = _infer(("inference.json", "demo.json", "network_resnet50.json", "inference_ensemble.json"), images, root,
                 tmp_path / "ensemble")  # fmt: skip
    assert isinstance(ens.parser.get_parsed_content("network_def"), ResNet)
    one, fused = (_read_csv(tmp_path / d / "predictions.csv") for d in ("plain", "ensemble"))
    assert one.keys() == fused.keys() and len(one) == 10
    for path in one:  # one fold: the ensemble is that model
        np.testing.assert_array_equal(one[path], fused[path])
    assert len(list((tmp_path / "plain" / "gradcam").glob("*_gradcam.png"))) == 10


def test_resnet50_takes_torchvision_imagenet_weights_and_freezes_to_its_head(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet50(weights=None)
    torch.save(tv.state_dict(), tmp_path / "resnet50-imagenet.pth")
    net = cxr_network("resnet50", pretrained_path=str(tmp_path / "resnet50-imagenet.pth"), freeze=True)
    sd, ref = net.state_dict(), tv.state_dict()
    torch.testing.assert_close(sd["conv1.weight"], ref["conv1.weight"].sum(1, keepdim=True), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(sd[k], ref[k]) for k in ref if k not in ("conv1.weight", "fc.weight", "fc.bias"))
    assert sd["fc.weight"].shape == (14, 2048)  # the ImageNet head (1000 classes) is not loaded
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    # the grey network answers a grey picture as the RGB ImageNet network answers the same picture in RGB
    tv.eval()
    net.eval()
    grey = torch.rand(2, 1, 64, 64)
    features = torch.nn.Sequential(*list(tv.children())[:-1])
    ours = torch.nn.Sequential(*[m for name, m in net.named_children() if name != "fc"])
    with torch.no_grad():
        torch.testing.assert_close(ours(grey).flatten(1), features(grey.repeat(1, 3, 1, 1)).flatten(1), atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match="no dropout"):
        cxr_network("resnet50", dropout=0.2)
