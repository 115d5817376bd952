"""torchxrayvision DenseNet-121 files, imported with tools/import_weights.py, give torchxrayvision's probabilities
through this bundle's inference config + configs/weights_xrv.json, per label in this bundle's label order.

torchxrayvision's side is its own code (the pinned package from the registry): ``xrv.models.DenseNet(weights=None)``
with seeded random weights, saved the way its weights are published (the whole pickled network), its thresholds
table for the variant (set on the network as xrv does when it loads published weights), and its preprocessing
(``xrv.utils.load_image``, ``XRayCenterCrop``, ``XRayResizer(224)``). The same PNGs go through both.

The bundle's evaluation (train.json + evaluate.json + weights_xrv.json) on a synthetic dataset in NIH's layout is
checked against AUROC computed here with SciPy's Mann-Whitney U from torchxrayvision's own outputs and the labels
of ``Data_Entry_2017.csv`` (scikit-learn is not in requirements.txt; U / (positives x negatives) is the same area).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchxrayvision as xrv
from PIL import Image
from scipy import ndimage, stats

from common.checkpoint import CheckpointError, atomic_save, load_checkpoint
from common.errors import root_cause
from scripts.labels import LABELS
from tests.helpers import bundle_workflow, calibrate_batch_norm, inference_workflow, randomize_weights
from tools.import_weights import import_weights
from tools.weights.publisher import WeightsImportError

BUNDLE = Path(__file__).resolve().parents[1]
CONFIGS = [str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "weights_xrv.json")]
EVALUATE = ["train.json", "evaluate.json", "weights_xrv.json"]  # the documented evaluation, in its layering order
TOLERANCE = 1e-5


def _png(path: Path, shape: tuple[int, int], seed: int) -> Path:
    """An 8-bit grey image with structure at several scales, not square (the centre crop matters)."""
    rng = np.random.default_rng(seed)
    field = sum(ndimage.gaussian_filter(rng.standard_normal(shape), s) * s for s in (2, 8, 30))
    rows = np.linspace(-1, 1, shape[0])[:, None]
    picture = field / np.abs(field).max() + 0.8 * np.exp(-(rows**2) * 3)
    picture = (picture - picture.min()) / (picture.max() - picture.min())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cxr")
    _png(folder / "a_landscape.png", (300, 410), seed=1)
    _png(folder / "b_portrait.png", (437, 320), seed=2)
    return folder


def xrv_input(png: Path) -> torch.Tensor:
    """torchxrayvision's preprocessing of one image: (1, 1, 224, 224) in [-1024, 1024]."""
    image = xrv.utils.load_image(str(png))
    return torch.from_numpy(xrv.datasets.XRayResizer(224)(xrv.datasets.XRayCenterCrop()(image)))[None]


def seeded_publisher(pngs: list[Path]) -> torch.nn.Module:
    """xrv's DenseNet with seeded weights, its batch-norm statistics measured on ``pngs`` (so that its outputs on
    images like them do not saturate) and a head that spreads the probabilities."""
    torch.manual_seed(0)
    network = randomize_weights(xrv.models.DenseNet(weights=None), seed=31)
    network = calibrate_batch_norm(network, [torch.cat([xrv_input(p) for p in pngs])])
    with torch.no_grad():  # a trained head's spread and negative bias: probabilities ~0.001-0.8, on both sides of
        network.classifier.weight.mul_(8)  # xrv's operating points (0.0004-0.33), so both branches of op_norm run
        network.classifier.bias.sub_(3)
    return network


@pytest.fixture(scope="module")
def publisher_network(images: Path) -> torch.nn.Module:
    return seeded_publisher(sorted(images.glob("*.png")))


def xrv_outputs(network: torch.nn.Module, png: Path, op_threshs: torch.Tensor | None) -> np.ndarray:
    """torchxrayvision's 18 outputs for one image, its own way (recalibrated when ``op_threshs`` is given)."""
    network.op_threshs = op_threshs
    network.apply_sigmoid = op_threshs is None
    with torch.no_grad():
        return network(xrv_input(png)).numpy()[0]


def _bundle_probabilities(ckpt: Path, images: Path, out: Path, **override: object) -> dict[str, dict[str, float]]:
    workflow = inference_workflow(BUNDLE, CONFIGS, images, out, ckpt_path=str(ckpt), num_workers=0, **override)
    workflow.run()
    with open(out / "predictions.csv", newline="") as f:
        return {Path(r.pop("image")).name: {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)}


@pytest.mark.parametrize("variant", ["densenet121-res224-nih", "densenet121-res224-all", "densenet121-res224-chex"])
def test_import_gives_xrv_probabilities(
    variant: str, publisher_network: torch.nn.Module, images: Path, tmp_path: Path
) -> None:
    table = xrv.models.model_urls[variant]
    published = tmp_path / Path(table["weights_url"]).name  # the published file name tells the variant
    publisher_network.op_threshs = None  # as the published files were saved
    torch.save(publisher_network, published)

    with pytest.raises(WeightsImportError, match=f"{published.name}: holds pickled .*--unsafe_unpickle"):
        import_weights("xrv_densenet", published, tmp_path / "refused.pt")
    imported = tmp_path / "model.pt"
    with pytest.warns(UserWarning, match="full unpickling"):
        import_weights("xrv_densenet", published, imported, unsafe_unpickle=True)

    start = time.perf_counter()
    ours = _bundle_probabilities(imported, images, tmp_path / "eval")
    seconds = time.perf_counter() - start
    names = table["labels"]
    kept = [label for label in LABELS if label in names]
    assert list(next(iter(ours.values()))) == kept
    worst = 0.0
    for png in sorted(images.glob("*.png")):
        expected = xrv_outputs(publisher_network, png, torch.tensor(table["op_threshs"]))
        for label in kept:
            difference = abs(ours[png.name][label] - float(expected[names.index(label)]))
            assert difference <= TOLERANCE, (png.name, label, ours[png.name][label], expected[names.index(label)])
            worst = max(worst, difference)
    print(f"{variant}: {len(kept)} labels, largest difference {worst:.2e}, bundle inference {seconds:.1f} s")


def test_state_dict_and_plain_sigmoid(publisher_network: torch.nn.Module, images: Path, tmp_path: Path) -> None:
    """A plain state dict needs no unpickling (``--variant`` names the labels); ``--xrv_recalibrate false`` gives the
    sigmoid outputs, as xrv with ``op_threshs=None, apply_sigmoid=True``."""
    publisher_network.op_threshs = None
    state_file = tmp_path / "state_dict.pt"
    torch.save(publisher_network.state_dict(), state_file)
    with pytest.raises(WeightsImportError, match="state_dict.pt: not one of torchxrayvision's published file names"):
        import_weights("xrv_densenet", state_file, tmp_path / "refused.pt")
    imported = tmp_path / "model.pt"
    import_weights("xrv_densenet", state_file, imported, variant="nih")

    ours = _bundle_probabilities(imported, images, tmp_path / "eval", xrv_recalibrate="false")
    names = xrv.models.model_urls["densenet121-res224-nih"]["labels"]
    for png in sorted(images.glob("*.png")):
        expected = xrv_outputs(publisher_network, png, None)
        got = np.array([ours[png.name][label] for label in LABELS])
        want = np.array([expected[names.index(label)] for label in LABELS])
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_wrong_variant_and_wrong_file_are_refused(publisher_network: torch.nn.Module, tmp_path: Path) -> None:
    published = tmp_path / Path(xrv.models.model_urls["densenet121-res224-nih"]["weights_url"]).name
    torch.save(publisher_network.state_dict(), published)
    with pytest.raises(WeightsImportError, match="published densenet121-res224-nih file, but --variant says .*chex"):
        import_weights("xrv_densenet", published, tmp_path / "out.pt", variant="chex")
    resnet = tmp_path / "resnet.pt"
    torch.save(torch.nn.Conv2d(1, 2, 3).state_dict(), resnet)
    with pytest.raises(WeightsImportError, match=r"resnet\.pt: not a torchxrayvision DenseNet-121.*missing"):
        import_weights("xrv_densenet", resnet, tmp_path / "out.pt", variant="nih")
    assert not (tmp_path / "out.pt").exists()


def test_bundle_checkpoint_is_refused_by_the_override(tmp_path: Path) -> None:
    """configs/weights_xrv.json reads the labels from the imported checkpoint; a bundle-trained one has none."""
    from scripts.xrv import imported_labels

    ckpt = atomic_save({"model": {}, "info": {"bundle": "cxr14_classification"}}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt: not a torchxrayvision import.*import_weights.py xrv_densenet"):
        imported_labels(ckpt)


# ----------------------------------------------------------------------------- evaluation with imported weights


@pytest.fixture(scope="module")
def nih_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m scripts.synthetic``'s NIH layout, small: 24 test images where 12 of the 14 labels (all 7 of
    CheXpert's) have both classes (no Emphysema or Hernia), and 8 validation images, 9 labels with both classes."""
    from scripts.synthetic import generate

    return generate(tmp_path_factory.mktemp("nih"), n_patients=36, size=64, seed=2, n_dicom=0)


@pytest.fixture(scope="module")
def nih_publisher(nih_dataset: Path) -> torch.nn.Module:
    """The seeded publisher's network with batch-norm statistics of 8 training images of the synthetic set (on
    statistics of other pictures its outputs are mostly 0 or 1, and ties would make AUROC checks weak)."""
    names = (nih_dataset / "train_val_list.txt").read_text().split()[:8]
    return seeded_publisher([next(nih_dataset.glob(f"images_*/images/{name}")) for name in names])


def nih_labels(dataset: Path) -> dict[str, set[str]]:
    """Image name -> findings, read from ``Data_Entry_2017.csv`` here (not by the bundle's prepare)."""
    with open(dataset / "Data_Entry_2017.csv", newline="") as f:
        return {row["Image Index"]: set(row["Finding Labels"].split("|")) for row in csv.DictReader(f)}


def auroc_scipy(scores: list[float], labels: list[int]) -> float:
    """AUROC as SciPy's Mann-Whitney U over (positives x negatives), ties counted one half."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    return float(stats.mannwhitneyu(positives, negatives).statistic) / (len(positives) * len(negatives))


def _import(network: torch.nn.Module, variant: str, folder: Path) -> Path:
    """The network saved as a state dict and imported as ``variant`` (``--variant``; no unpickling needed)."""
    network.op_threshs = None
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / "state_dict.pt")
    import_weights("xrv_densenet", folder / "state_dict.pt", folder / "model.pt", variant=variant)
    return folder / "model.pt"


@pytest.fixture(scope="module")
def xrv_evaluation(
    nih_publisher: torch.nn.Module, nih_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """Runs the documented evaluation of an imported ``variant`` once per setting; returns its output folder."""
    done: dict[tuple, Path] = {}

    def run(variant: str, **override: object) -> Path:
        key = (variant, *sorted(override.items()))
        if key not in done:
            work = tmp_path_factory.mktemp(f"eval_{variant}")
            workflow = bundle_workflow(
                BUNDLE,
                EVALUATE,
                "train",
                "evaluating",
                bundle_root=str(work),
                ckpt_path=str(_import(nih_publisher, variant, work / "models")),
                dataset_dir=str(nih_dataset),
                output_dir=str(work / "eval"),
                num_workers=0,
                **override,
            )
            start = time.perf_counter()
            workflow.run()
            print(f"{variant} {override}: evaluation {time.perf_counter() - start:.1f} s")
            done[key] = work / "eval"
        return done[key]

    return run


@pytest.mark.parametrize("variant", ["nih", "chex"])
def test_evaluation_scores_xrv_outputs_by_label(
    variant: str, xrv_evaluation: Callable[..., Path], nih_publisher: torch.nn.Module, nih_dataset: Path
) -> None:
    """metrics.json reports exactly the model's labels, by name, with the AUROC SciPy gives for
    torchxrayvision's own (recalibrated) outputs on the official test list against Data_Entry_2017.csv; the
    probabilities it scored are torchxrayvision's, per image and label."""
    out = xrv_evaluation(variant)
    report = json.loads((out / "metrics.json").read_text())
    table = xrv.models.model_urls[f"densenet121-res224-{variant}"]
    names = table["labels"]
    kept = [label for label in LABELS if label in names]
    assert [row["label"] for row in report["labels"]] == kept

    truth = nih_labels(nih_dataset)
    test = (nih_dataset / "test_list.txt").read_text().split()
    with open(out / "test_predictions.csv", newline="") as f:
        scored = {Path(r["image"]).name: r for r in csv.DictReader(f)}
    assert sorted(scored) == sorted(test)
    scores = {}
    for name in test:
        expected = xrv_outputs(nih_publisher, next(nih_dataset.glob(f"images_*/images/{name}")),
                               torch.tensor(table["op_threshs"]))  # fmt: skip
        scores[name] = [float(expected[names.index(label)]) for label in kept]
        got = [float(scored[name][f"p_{label}"]) for label in kept]
        np.testing.assert_allclose(got, scores[name], rtol=0, atol=TOLERANCE, err_msg=name)
        assert [int(scored[name][f"y_{label}"]) for label in kept] == [int(label in truth[name]) for label in kept]

    compared = []
    for i, row in enumerate(report["labels"]):
        y = [int(row["label"] in truth[name]) for name in test]
        assert (row["n_positive"], row["n_negative"]) == (sum(y), len(y) - sum(y))
        if 0 < sum(y) < len(y):
            expected_auroc = auroc_scipy([scores[name][i] for name in test], y)
            assert abs(row["auroc"] - expected_auroc) <= 1e-6, (row["label"], row["auroc"], expected_auroc)
            compared.append(f"{row['label']} {row['auroc']:.4f}")
        else:
            assert np.isnan(row["auroc"]), row
    assert len(compared) == {"nih": 12, "chex": 7}[variant]
    print(f"{variant}: AUROC as SciPy's on xrv's outputs: {', '.join(compared)}")


def test_recalibration_keeps_auroc_and_moves_thresholds(
    xrv_evaluation: Callable[..., Path],
) -> None:
    """op_norm is increasing per label, so ``--xrv_recalibrate false`` scores the same AUROC and, where validation
    has both classes, the same sensitivity and specificity at Youden's threshold, which is the recalibrated one
    mapped back (xrv's own ``op_norm``). Without both classes the report falls back to 0.5 in either scale:
    torchxrayvision's operating point when recalibrated, the sigmoid's middle otherwise."""
    table = xrv.models.model_urls["densenet121-res224-nih"]
    thresholds = {name: t for name, t in zip(table["labels"], table["op_threshs"]) if name}
    recalibrated = json.loads((xrv_evaluation("nih") / "metrics.json").read_text())["labels"]
    sigmoid = json.loads((xrv_evaluation("nih", xrv_recalibrate="false") / "metrics.json").read_text())["labels"]
    mapped = 0
    for r, s in zip(recalibrated, sigmoid, strict=True):
        assert r["label"] == s["label"]
        assert r["auroc"] == s["auroc"] or np.isnan(r["auroc"]) and np.isnan(s["auroc"]), (r, s)
        assert r["val_auroc"] == s["val_auroc"] or np.isnan(r["val_auroc"]) and np.isnan(s["val_auroc"]), (r, s)
        if np.isnan(r["val_auroc"]):
            assert r["threshold"] == s["threshold"] == 0.5
            continue
        assert (r["sensitivity"], r["specificity"]) == (s["sensitivity"], s["specificity"]), (r, s)
        t = torch.tensor([[thresholds[r["label"]]]], dtype=torch.float32)
        assert r["threshold"] == float(xrv.models.op_norm(torch.tensor([[s["threshold"]]]), t)), (r, s)
        assert r["threshold"] != s["threshold"]
        mapped += 1
    assert mapped >= 5
    print(f"AUROC equal for {len(recalibrated)} labels; {mapped} thresholds recalibrated, sens/spec equal")


def test_evaluation_refuses_a_checkpoint_that_is_not_an_import(nih_dataset: Path, tmp_path: Path) -> None:
    """weights_xrv.json on a bundle-trained checkpoint stops the evaluation with an error naming the file."""
    ckpt = atomic_save({"model": {}, "info": {"bundle": "cxr14_classification"}}, tmp_path / "trained.pt")
    workflow = bundle_workflow(BUNDLE, EVALUATE, "train", "evaluating", bundle_root=str(tmp_path),
                               ckpt_path=str(ckpt), dataset_dir=str(nih_dataset), num_workers=0)  # fmt: skip
    with pytest.raises(Exception) as caught:
        workflow.run()
    cause = root_cause(caught.value)
    assert isinstance(cause, CheckpointError)
    assert f"{ckpt}: not a torchxrayvision import" in str(cause)


def test_benchmark_scores_the_published_file(
    xrv_evaluation: Callable[..., Path], nih_publisher: torch.nn.Module, nih_dataset: Path, tmp_path: Path
) -> None:
    """``make benchmark CXR14_DIR=... WEIGHTS=published CXR14_WEIGHTS=<publisher's file>``: the benchmark imports the
    file itself and reports the documented evaluation's scores (each label's AUROC is SciPy's on xrv's outputs, in
    the test above), with what the publisher trained on under the table; nothing is trained."""
    from benchmarks import quality

    network = nih_publisher
    network.op_threshs = None
    # as torchxrayvision publishes it: the whole pickled network under its published name (the variant is read
    # from the name), hence --unsafe_unpickle (UNSAFE_UNPICKLE=1)
    published = tmp_path / Path(xrv.models.model_urls["densenet121-res224-nih"]["weights_url"]).name
    torch.save(network, published)
    work = tmp_path / "bench"
    argv = ["--cxr14_dir", str(nih_dataset), "--weights", "published", "--work_dir", str(work),
            "--cxr14_weights", str(published), "--unsafe_unpickle"]  # fmt: skip
    assert quality.main(argv) == 0
    result = json.loads((work / "quality.json").read_text())["results"]["cxr14_classification"]
    assert not (work / "cxr14_classification_published" / "models" / "best_model.pt").exists()  # nothing trained
    documented = json.loads((xrv_evaluation("nih") / "metrics.json").read_text())
    per_label = [row["auroc"] for row in documented["labels"] if not np.isnan(row["auroc"])]
    assert result["metrics"]["mean_auroc"] == pytest.approx(float(np.mean(per_label)), abs=1e-4)
    assert result["metrics"]["mean_auroc"] == round(documented["summary"]["auroc"], 4)
    report = (work / "quality.md").read_text()
    assert "xrv_densenet weights imported" in report and "official test list overlaps its training images" in report


def test_benchmark_published_needs_data_and_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything runs, naming what is missing."""
    from benchmarks import quality

    cases = [
        (["--weights", "published"], "give --brats_dir"),
        (["--weights", "published", "--cxr14_dir", "/x"], "needs the publisher's file: --cxr14_weights"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as caught:
            quality.main(argv)
        assert caught.value.code == 2 and message in capsys.readouterr().err


def test_fine_tuning_starts_from_the_imported_weights_with_xrv_preprocessing(
    nih_publisher: torch.nn.Module, nih_dataset: Path, tmp_path: Path
) -> None:
    """``train.json`` + ``weights_xrv.json`` with ``--pretrained_path`` and ``--ckpt_path`` of an imported file
    fine-tunes it: the training network starts with exactly the imported weights, training and validation get
    torchxrayvision's preprocessing (the override's, followed by the bundle's random transforms for training), and
    one epoch runs and saves a checkpoint (the override's preprocessing used to break training's concatenation)."""
    ckpt = _import(nih_publisher, "nih", tmp_path / "imported")
    workflow = bundle_workflow(
        BUNDLE,
        ["train.json", "weights_xrv.json"],
        "train",
        "training",
        bundle_root=str(tmp_path / "run"),
        ckpt_path=str(ckpt),
        pretrained_path=str(ckpt),
        dataset_dir=str(nih_dataset),
        max_epochs=1,
        batch_size=8,
        num_workers=0,
    )
    imported = load_checkpoint(ckpt)["model"]
    network = workflow.parser.get_parsed_content("network")
    assert all(torch.equal(v.cpu(), imported[k].cpu()) for k, v in network.state_dict().items()), "not the import"
    names = [type(t).__name__ for t in workflow.parser.get_parsed_content("validate#preprocessing").transforms]
    assert names[:4] == ["LoadCXRd", "SquareCenterCropd", "NormalizeIntensityd", "XRVResized"], names
    train = [type(t).__name__ for t in workflow.parser.get_parsed_content("train#preprocessing").transforms]
    assert train[: len(names)] == names and len(train) > len(names), train
    workflow.run()
    tuned = tmp_path / "run" / "models" / "model.pt"
    info = load_checkpoint(tuned)["info"]
    assert info["fine_tuned_from"] == str(ckpt) and info["labels"] == load_checkpoint(ckpt)["info"]["labels"]
    # the result runs with the override as the import does (labels and outputs read from the checkpoint)
    out = _bundle_probabilities(tuned, nih_dataset / "images_001" / "images", tmp_path / "infer")
    assert len(next(iter(out.values()))) == len(info["labels"])
