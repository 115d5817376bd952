"""torchxrayvision DenseNet-121 files, imported with tools/import_weights.py, give torchxrayvision's probabilities
through this bundle's inference config + configs/weights_xrv.json, per label in this bundle's label order.

torchxrayvision's side is its own code (the pinned package from the registry): ``xrv.models.DenseNet(weights=None)``
with seeded random weights, saved the way its weights are published (the whole pickled network), its thresholds
table for the variant (set on the network as xrv does when it loads published weights), and its preprocessing
(``xrv.utils.load_image``, ``XRayCenterCrop``, ``XRayResizer(224)``). The same PNGs go through both.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchxrayvision as xrv
from PIL import Image
from scipy import ndimage

from common.checkpoint import CheckpointError, atomic_save
from scripts.labels import LABELS
from tests.helpers import bundle_workflow, calibrate_batch_norm, randomize_weights
from tools.import_weights import import_weights
from tools.weights.publisher import WeightsImportError

BUNDLE = Path(__file__).resolve().parents[1]
CONFIGS = [str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "weights_xrv.json")]
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


@pytest.fixture(scope="module")
def publisher_network(images: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    network = randomize_weights(xrv.models.DenseNet(weights=None), seed=31)
    network = calibrate_batch_norm(network, [torch.cat([xrv_input(p) for p in sorted(images.glob("*.png"))])])
    with torch.no_grad():  # a trained head's spread and negative bias: probabilities ~0.001-0.8, on both sides of
        network.classifier.weight.mul_(8)  # xrv's operating points (0.0004-0.33), so both branches of op_norm run
        network.classifier.bias.sub_(3)
    return network


def xrv_outputs(network: torch.nn.Module, png: Path, op_threshs: torch.Tensor | None) -> np.ndarray:
    """torchxrayvision's 18 outputs for one image, its own way (recalibrated when ``op_threshs`` is given)."""
    network.op_threshs = op_threshs
    network.apply_sigmoid = op_threshs is None
    with torch.no_grad():
        return network(xrv_input(png)).numpy()[0]


def _bundle_probabilities(ckpt: Path, images: Path, out: Path, **override: object) -> dict[str, dict[str, float]]:
    workflow = bundle_workflow(
        BUNDLE,
        CONFIGS,
        "inference",
        "run",
        bundle_root=str(BUNDLE),
        ckpt_path=str(ckpt),
        dataset_dir=str(images),
        output_dir=str(out),
        num_workers=0,
        **override,
    )
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
