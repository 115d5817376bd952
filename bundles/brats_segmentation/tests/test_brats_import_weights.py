"""The MONAI model zoo's brats_mri_segmentation weights, imported with tools/import_weights.py, give the model zoo's
label maps through this bundle's inference config + configs/weights_model_zoo.json.

The model zoo's side is written here from its own files (models/brats_mri_segmentation v0.5.2: configs/
inference.json), with MONAI's classes: the network with its arguments and seeded random weights, saved the way its
CheckpointSaver saves (a bare state dict), and its preprocessing, sliding window and postprocessing. The same case
goes through both; the label maps must be identical voxel for voxel.
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet
from monai.transforms import Activationsd, AsDiscreted, Compose, Lambdad, LoadImaged, NormalizeIntensityd

from scripts.synthetic import LAYOUTS, generate
from tests.helpers import inference_workflow, randomize_weights
from tools.import_weights import import_weights
from tools.weights.publisher import WeightsImportError

BUNDLE = Path(__file__).resolve().parents[1]
CONFIGS = [str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "weights_model_zoo.json")]

# models/brats_mri_segmentation/configs/inference.json (model zoo v0.5.2)
ZOO_NETWORK = {
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "init_filters": 16,
    "in_channels": 4,
    "out_channels": 3,
    "dropout_prob": 0.2,
}
ZOO_WINDOW = {"roi_size": [240, 240, 160], "sw_batch_size": 1, "overlap": 0.5}
ZOO_MODALITIES = ("t1ce", "t1", "t2", "flair")  # the order of its datalist's "image" lists (prepare_datalist.py)

# A 240x240x160 window takes over a minute per run on 2 busy CPU cores; the exactness test runs both pipelines with a
# smaller window (4 overlapping windows over the case, so the blending is exercised too), and
# test_override_sets_the_model_zoo_settings checks that the override itself uses the model zoo's window.
TEST_ROI = [48, 48, 48]
SIZE = (64, 64, 48)


def zoo_label_map(network: torch.nn.Module, files: list[str], roi_size: list[int]) -> np.ndarray:
    """The model zoo's inference.json on one case (its Invertd step is left out: it inverts nothing here, the
    preprocessing has no spatial transform)."""
    preprocessing = Compose(
        [LoadImaged(keys="image", image_only=False), NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]
    )
    window = SlidingWindowInferer(**{**ZOO_WINDOW, "roi_size": roi_size})
    postprocessing = Compose(
        [
            Activationsd(keys="pred", sigmoid=True),
            AsDiscreted(keys="pred", threshold=0.5),
            Lambdad(
                keys="pred",
                func=lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0))),
            ),
        ]
    )
    item = preprocessing({"image": files})
    network.eval()
    with torch.no_grad():
        item["pred"] = window(item["image"][None], network)[0]
    return np.asarray(postprocessing(item)["pred"][0]).astype(np.uint8)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model zoo's network with seeded random weights, saved as its models/model.pt."""
    folder = tmp_path_factory.mktemp("model_zoo_brats")
    torch.manual_seed(0)
    network = randomize_weights(SegResNet(**ZOO_NETWORK), seed=17)
    torch.save(network.state_dict(), folder / "model.pt")
    return folder / "model.pt"


def test_import_gives_the_model_zoo_label_maps(published: Path, tmp_path: Path) -> None:
    case = generate(tmp_path / "data", n_cases=1, layout="2021", size=SIZE, seed=3)[0]
    _, sep, suffixes, _ = LAYOUTS["2021"]
    assert suffixes == ZOO_MODALITIES
    files = [str(case / f"{case.name}{sep}{m}.nii.gz") for m in ZOO_MODALITIES]

    start = time.perf_counter()
    network = SegResNet(**ZOO_NETWORK)
    network.load_state_dict(torch.load(published, weights_only=True))
    expected = zoo_label_map(network, files, TEST_ROI)
    zoo_seconds = time.perf_counter() - start
    assert len(np.unique(expected)) >= 3, np.unique(expected)  # a real comparison, not all background

    imported = tmp_path / "models" / "model.pt"
    lines = import_weights("model_zoo_brats", published, imported)
    assert any("configs/weights_model_zoo.json" in line for line in lines)
    ckpt = torch.load(imported, weights_only=True)
    assert ckpt["info"]["source"] == "model_zoo_brats" and set(ckpt["model"]) == set(network.state_dict())

    start = time.perf_counter()
    workflow = inference_workflow(
        BUNDLE, CONFIGS, case, tmp_path / "eval", ckpt_path=str(imported), val_roi_size=TEST_ROI
    )
    workflow.run()
    ours = np.asarray(nib.load(tmp_path / "eval" / f"{case.name}_seg.nii.gz").dataobj)
    values, counts = np.unique(expected, return_counts=True)
    print(f"model zoo pipeline {zoo_seconds:.1f} s, bundle {time.perf_counter() - start:.1f} s, voxels per label "
          f"{dict(zip(values.tolist(), counts.tolist()))}")  # fmt: skip

    assert ours.shape == expected.shape
    differing = int((ours != expected).sum())
    assert differing == 0, f"{differing} of {expected.size} voxels differ"


def test_override_sets_the_model_zoo_settings() -> None:
    """What the exactness test shrinks for time (the window) and what it cannot see on a CPU without native bf16
    (autocast) are the model zoo's values in the override."""
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update({"bundle_root": str(BUNDLE)})
    parser.get_parsed_content("imports")
    window = parser.get_parsed_content("inferer").inferer
    assert (list(window.roi_size), window.sw_batch_size, window.overlap) == (
        ZOO_WINDOW["roi_size"],
        ZOO_WINDOW["sw_batch_size"],
        ZOO_WINDOW["overlap"],
    )
    amp = parser.get_parsed_content("amp")
    assert not amp.enabled and not amp.channels_last  # fp32 in the default memory layout, as the model zoo on a CPU
    ours = parser.get_parsed_content("network_def", instantiate=True).state_dict()
    zoo = SegResNet(**ZOO_NETWORK).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in zoo.items()}


def test_wrong_file_is_refused_by_name(tmp_path: Path) -> None:
    other = tmp_path / "unet.pt"
    torch.save(SegResNet(init_filters=8, in_channels=4, out_channels=3).state_dict(), other)
    with pytest.raises(WeightsImportError, match=r"unet\.pt: not the MONAI model zoo's brats_mri_segmentation.*shape"):
        import_weights("model_zoo_brats", other, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
