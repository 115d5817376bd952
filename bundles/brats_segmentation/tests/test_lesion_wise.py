"""BraTS 2023 lesion-wise scoring on hand-built cases, one rule each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.lesion_wise import FP_HD, LesionWise, lesion_wise_scores, reference_lesions

SHAPE = (40, 40, 30)


def hd95(a: np.ndarray, b: np.ndarray) -> float:
    """Brute-force HD95 at 1 mm: surface voxels (a face-neighbour outside), all pairwise distances."""

    def surface(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, 1)
        inner = padded[1:-1, 1:-1, 1:-1]
        edge = np.zeros_like(m)
        for axis in range(3):
            for shift in (-1, 1):
                edge |= inner & ~np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(edge).astype(float)

    pa, pb = surface(a), surface(b)
    d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


def cube(mask: np.ndarray, corner: tuple[int, int, int], size: int) -> np.ndarray:
    x, y, z = corner
    mask[x : x + size, y : y + size, z : z + size] = True
    return mask


def test_found_missed_and_false_positive_lesions() -> None:
    ref = cube(cube(np.zeros(SHAPE, bool), (2, 2, 2), 4), (25, 25, 20), 4)
    pred = cube(cube(np.zeros(SHAPE, bool), (2, 2, 2), 4), (20, 2, 20), 3)  # lesion 1 exact, lesion 2 missed, 1 FP
    got = lesion_wise_scores(pred, ref)
    assert (got["lesions"], got["false_positives"]) == (2, 1)
    assert got["dice"] == pytest.approx(1 / 3)
    assert got["hd95"] == pytest.approx(2 * FP_HD / 3)


def test_nearby_reference_blobs_merge_into_one_lesion() -> None:
    ref = cube(cube(np.zeros(SHAPE, bool), (5, 5, 5), 4), (12, 5, 5), 4)  # 3-voxel gap: one lesion
    _, n = reference_lesions(ref, dilation_iterations=3)
    assert n == 1
    assert reference_lesions(ref, dilation_iterations=0)[1] == 2
    pred = cube(np.zeros(SHAPE, bool), (5, 5, 5), 4)
    got = lesion_wise_scores(pred, ref)
    assert got["lesions"] == 1 and got["false_positives"] == 0
    assert got["dice"] == pytest.approx(2 * 64 / (64 + 128))
    assert got["hd95"] == pytest.approx(hd95(pred, ref))


def test_small_lesions_are_not_scored_and_not_false_positives() -> None:
    ref = cube(np.zeros(SHAPE, bool), (10, 10, 10), 3)  # 27 voxels <= 50
    pred = cube(np.zeros(SHAPE, bool), (11, 10, 10), 3)
    assert lesion_wise_scores(pred, ref) == {"dice": 1.0, "hd95": 0.0, "lesions": 0, "false_positives": 0}
    # the rule counts voxels, not mm^3: at 2 mm spacing (216 mm^3) the lesion is still not scored
    assert lesion_wise_scores(pred, ref, spacing=(2.0, 2.0, 2.0))["lesions"] == 0
    # a 4x4x4 lesion (64 voxels > 50) is
    big = cube(np.zeros(SHAPE, bool), (10, 10, 10), 4)
    scored = lesion_wise_scores(cube(np.zeros(SHAPE, bool), (11, 10, 10), 4), big)
    assert scored["lesions"] == 1 and scored["dice"] == pytest.approx(2 * 48 / 128)


def test_prediction_touching_only_the_dilated_lesion_is_matched() -> None:
    ref = cube(np.zeros(SHAPE, bool), (10, 10, 10), 4)
    pred = cube(np.zeros(SHAPE, bool), (16, 10, 10), 4)  # 2 voxels away: inside the 3-voxel dilation
    got = lesion_wise_scores(pred, ref)
    assert got["false_positives"] == 0 and got["dice"] == 0.0
    assert got["hd95"] == pytest.approx(hd95(pred, ref))


def test_empty_case_and_false_positive_only() -> None:
    empty = np.zeros(SHAPE, bool)
    assert lesion_wise_scores(empty, empty)["dice"] == 1.0
    only_fp = lesion_wise_scores(cube(empty.copy(), (3, 3, 3), 2), empty)
    assert only_fp == {"dice": 0.0, "hd95": FP_HD, "lesions": 0, "false_positives": 1}


def test_handlers_aggregate_per_region() -> None:
    from ignite.engine import Engine

    ref = np.stack([cube(np.zeros(SHAPE, bool), (2, 2, 2), 4), np.zeros(SHAPE, bool)])
    pred = np.stack([cube(np.zeros(SHAPE, bool), (2, 2, 2), 4), cube(np.zeros(SHAPE, bool), (9, 9, 9), 2)])
    batch = {
        "pred": [MetaTensor(torch.as_tensor(pred, dtype=torch.float32))],
        "label": [MetaTensor(torch.as_tensor(ref, dtype=torch.float32))],
    }
    engine = Engine(lambda e, b: b)
    dice_h = LesionWise(["TC", "ET"], "dice", output_transform=lambda o: (o["pred"], o["label"]))
    hd_h = LesionWise(["TC", "ET"], "hd95", output_transform=lambda o: (o["pred"], o["label"]))
    dice_h.attach(engine, "lw_dice")
    hd_h.attach(engine, "lw_hd95")
    engine.run([batch])
    m = engine.state.metrics
    assert (m["lw_dice_TC"], m["lw_dice_ET"]) == (1.0, 0.0)
    assert (m["lw_hd95_TC"], m["lw_hd95_ET"]) == (0.0, FP_HD)
