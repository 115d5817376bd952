"""The MONAI model zoo's lung_nodule_ct_detection weights, imported with tools/import_weights.py, give the model
zoo's boxes and scores through this bundle's inference config + configs/weights_model_zoo.json.

The model zoo's side is written here from its own files (models/lung_nodule_ct_detection v0.6.8: configs/
inference.json with whether_raw_luna16 true, scripts/detection_inferer.py), with MONAI's classes: the network with its
arguments, anchors, box selector and preprocessing (``benchmarks.speed.luna16``, the speed benchmark's reference
too) and seeded random weights saved as a bare state dict (what its CheckpointSaver writes), its detector settings,
window rule and box postprocessing. The same scan goes through both; every box must have one
partner (world mm, as written to 3 decimals) with a score within 1e-4.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.transforms.dictionary import AffineBoxToWorldCoordinated, ClipBoxToImaged, ConvertBoxModed
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.bundle import ConfigParser
from monai.networks.nets import SegResNet
from monai.transforms import Compose

from benchmarks.speed.luna16 import SPACING, ZOO_ANCHORS, ZOO_SELECTOR, ZOO_SIZE_DIVISIBLE, load_transforms, zoo_network
from scripts.engines import needs_sliding_window
from scripts.synthetic import make_scan, write_mhd
from tests.helpers import calibrate_batch_norm, inference_workflow, randomize_weights
from tools.import_weights import import_weights
from tools.weights.publisher import WeightsImportError

BUNDLE = Path(__file__).resolve().parents[1]
CONFIGS = [str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "weights_model_zoo.json")]

# models/lung_nodule_ct_detection/configs/inference.json (model zoo v0.6.8); its network, anchors, box selector and
# preprocessing are the speed benchmark's reference (benchmarks/speed/luna16.py), which reduces the window
ZOO_WINDOW = {"roi_size": [512, 512, 192], "overlap": 0.25, "sw_batch_size": 1, "mode": "constant", "device": "cpu"}
ZOO_SPACING = list(SPACING)


def zoo_image(mhd: Path) -> torch.Tensor:
    """The model zoo's preprocessing of a raw LUNA16 scan (``whether_raw_luna16`` true)."""
    return Compose(load_transforms())({"image": str(mhd)})["image"]


def zoo_detections(network: torch.nn.Module, mhd: Path) -> tuple[np.ndarray, np.ndarray]:
    """World LPS ``cccwhd`` boxes and scores, as the model zoo's inference.json computes them for a raw scan."""
    detector = RetinaNetDetector(
        network=network,
        anchor_generator=AnchorGeneratorWithAnchorShape(**ZOO_ANCHORS),
        debug=False,
        spatial_dims=3,
        num_classes=1,
        size_divisible=ZOO_SIZE_DIVISIBLE,
    )
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(**ZOO_SELECTOR)
    detector.set_sliding_window_inferer(**ZOO_WINDOW)
    postprocessing = Compose(
        [
            ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image", remove_empty=True),
            AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True),
            ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd"),
        ]
    )
    image = zoo_image(mhd)
    # scripts/detection_inferer.py: the sliding window unless the image has fewer voxels than the window
    use_inferer = not image[0].numel() < math.prod(ZOO_WINDOW["roi_size"])
    detector.eval()
    with torch.no_grad():
        pred = detector([image], use_inferer=use_inferer)[0]
    out = postprocessing({**pred, "image": image})
    return np.asarray(out["box"], dtype=np.float64).reshape(-1, 6), np.asarray(out["label_scores"], dtype=np.float64)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw scan (~80x80x48 voxels after resampling). Axis-aligned: on an oblique scan this bundle converts boxes to
    world mm exactly where the model zoo's AffineBoxToWorldCoordinated inflates them (scripts/boxes.py), a
    deliberate difference."""
    array, geometry, _, _ = make_scan(np.random.default_rng(5), size=(64, 64, 36), n_nodules=2)
    mhd = tmp_path_factory.mktemp("scan") / "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000001.mhd"
    write_mhd(array, geometry, mhd)
    return mhd


@pytest.fixture(scope="module")
def published(scan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model zoo's network with seeded random weights, saved as its models/model.pt. Batch-norm statistics are
    measured on the scan (else the scores saturate at 1), and the classification bias is set so that about a hundred
    anchors score above the 0.02 threshold: fewer than the 300 detections kept at most, so the threshold decides
    which boxes exist, not the cap."""
    folder = tmp_path_factory.mktemp("model_zoo_luna16")
    torch.manual_seed(0)
    network = calibrate_batch_norm(randomize_weights(zoo_network(), seed=23), [zoo_image(scan)[None]])
    with torch.no_grad():
        network.classification_head.cls_logits.bias.fill_(-6.2)
    torch.save(network.state_dict(), folder / "model.pt")
    return folder / "model.pt"


def test_import_gives_the_model_zoo_detections(published: Path, scan: Path, tmp_path: Path) -> None:
    mhd = scan
    start = time.perf_counter()
    network = zoo_network()
    network.load_state_dict(torch.load(published, weights_only=True))
    boxes, scores = zoo_detections(network, mhd)
    zoo_seconds = time.perf_counter() - start
    assert 20 <= len(scores) < ZOO_SELECTOR["detections_per_img"], len(scores)

    imported = tmp_path / "models" / "model.pt"
    import_weights("model_zoo_luna16", published, imported)
    start = time.perf_counter()
    workflow = inference_workflow(BUNDLE, CONFIGS, mhd, tmp_path / "eval", ckpt_path=str(imported), num_workers=0)
    workflow.run()
    written = json.loads((tmp_path / "eval" / f"{mhd.stem}.json").read_text())
    print(f"model zoo pipeline {zoo_seconds:.1f} s, bundle {time.perf_counter() - start:.1f} s, {len(scores)} boxes")
    ours_boxes = np.asarray(written["boxes"], dtype=np.float64).reshape(-1, 6)
    ours_scores = np.asarray(written["scores"], dtype=np.float64)

    assert written["box_mode"] == "cccwhd" and len(ours_scores) == len(scores)
    unmatched = list(range(len(ours_scores)))
    worst_box, worst_score = 0.0, 0.0
    for box, score in sorted(zip(boxes, scores), key=lambda bs: -bs[1]):
        box_error = np.abs(ours_boxes[unmatched] - box).max(axis=1)
        score_error = np.abs(ours_scores[unmatched] - score)
        partners = np.flatnonzero((box_error <= 1e-3 + 1e-6) & (score_error <= 1e-4))
        assert len(partners) > 0, f"model zoo box {box.round(3)} score {score:.6f} has no partner"
        best = partners[np.argmin(score_error[partners])]
        worst_box, worst_score = max(worst_box, box_error[best]), max(worst_score, score_error[best])
        unmatched.pop(int(best))
    print(f"largest box difference {worst_box:.2e} mm, largest score difference {worst_score:.2e}")


def test_override_sets_the_model_zoo_settings() -> None:
    """Settings the exactness test cannot reach on a small scan (the window, its rule) or on a CPU without native
    bf16 (autocast) are the model zoo's values in the override."""
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update({"bundle_root": str(BUNDLE)})
    parser.get_parsed_content("imports")
    assert parser.get_parsed_content("val_patch_size") == ZOO_WINDOW["roi_size"]
    assert parser.get_parsed_content("spacing") == ZOO_SPACING and parser.get_parsed_content("resample")
    assert parser.get_parsed_content("sliding_window_rule") == "voxel_count"
    amp = parser.get_parsed_content("amp")
    assert not amp.enabled and not amp.channels_last
    ours = parser.get_parsed_content("network_def", instantiate=True).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in zoo_network().state_dict().items()}


@pytest.mark.parametrize(
    "shape", [(512, 512, 192), (583, 583, 140), (583, 583, 160), (400, 400, 300), (300, 300, 100), (512, 512, 191)]
)
def test_voxel_count_rule_is_the_model_zoo_rule(shape: tuple[int, int, int]) -> None:
    """scripts/detection_inferer.py: ``not all(image[0].numel() < prod(roi_size))`` for one image."""
    zoo = not math.prod(shape) < math.prod(ZOO_WINDOW["roi_size"])
    assert needs_sliding_window(shape, ZOO_WINDOW["roi_size"], "voxel_count") == zoo


def test_wrong_file_is_refused_by_name(tmp_path: Path) -> None:
    other = tmp_path / "segresnet.pt"
    torch.save(SegResNet(init_filters=16, in_channels=4, out_channels=3).state_dict(), other)
    with pytest.raises(WeightsImportError, match=r"segresnet\.pt: not .*lung_nodule.*a file for model_zoo_brats"):
        import_weights("model_zoo_luna16", other, tmp_path / "out.pt")
