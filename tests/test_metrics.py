"""Region metrics against brute-force numpy/scipy computations and the official empty-case rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.spatial.distance import cdist

from common.metrics import (
    BRATS_EMPTY_HD,
    RegionDiceMetric,
    RegionHausdorffMetric,
    RegionIoUMetric,
    dice,
    hausdorff,
    iou,
    spacing_of,
)


def brute_surface_points(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Surface voxels by explicit face-neighbour checks (zero padding), as physical coordinates."""
    padded = np.pad(mask, 1)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    on_surface = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            neighbour = np.roll(padded, shift, axis=axis)[inner]
            on_surface |= mask & ~neighbour
    return np.argwhere(on_surface) * np.asarray(spacing)


def brute_hausdorff(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], percentile: float | None) -> float:
    pa, pb = brute_surface_points(a, spacing), brute_surface_points(b, spacing)
    d = cdist(pa, pb)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    if percentile is None:
        return max(d_ab.max(), d_ba.max())
    return max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile))


def random_blob(rng: np.random.Generator, shape: tuple[int, ...], fill: float) -> np.ndarray:
    noise = rng.random(shape)
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(noise, 1.5)
    return smooth > np.quantile(smooth, 1 - fill)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5), (1.2, 0.5, 3.0)])
def test_distances_match_brute_force(seed: int, spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(seed)
    shape = (18, 16, 12)
    a = random_blob(rng, shape, rng.uniform(0.05, 0.4))
    b = random_blob(rng, shape, rng.uniform(0.05, 0.4))
    for percentile in (95.0, None, 50.0):
        ours = hausdorff(a, b, spacing, percentile)
        assert ours == pytest.approx(brute_hausdorff(a, b, spacing, percentile), rel=1e-9, abs=1e-9)
    # overlap metrics against set arithmetic
    inter, union = np.sum(a & b), np.sum(a | b)
    assert dice(a, b) == pytest.approx(2 * inter / (a.sum() + b.sum()))
    assert iou(a, b) == pytest.approx(inter / union)


def test_hausdorff_2d_and_single_voxel() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2, 2] = True
    b[5, 6] = True
    assert hausdorff(a, b, (2.0, 1.0), None) == pytest.approx(math.hypot(3 * 2.0, 4 * 1.0))
    assert hausdorff(a, a, (2.0, 1.0)) == 0.0


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "brats", "nan_rule"),
    [
        (True, True, (1.0, 1.0, 0.0), (math.nan, math.nan, math.nan)),
        (True, False, (0.0, 0.0, BRATS_EMPTY_HD), (0.0, 0.0, math.nan)),
        (False, True, (0.0, 0.0, BRATS_EMPTY_HD), (math.nan, math.nan, math.nan)),
    ],
)
def test_empty_case_rules(pred_empty: bool, ref_empty: bool, brats: tuple, nan_rule: tuple) -> None:
    full = np.zeros((8, 8, 8), bool)
    full[2:5, 2:5, 2:5] = True
    pred = np.zeros_like(full) if pred_empty else full
    ref = np.zeros_like(full) if ref_empty else full
    for rule, expected in (("brats", brats), ("nan", nan_rule)):
        got = (dice(pred, ref, rule), iou(pred, ref, rule), hausdorff(pred, ref, (1, 1, 2), 95, rule))
        for g, e in zip(got, expected):
            assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e), (rule, got, expected)


def test_brats_constant_is_the_volume_diagonal() -> None:
    assert BRATS_EMPTY_HD == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.005)


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="empty_rule"):
        dice(np.ones(3), np.ones(3), "ignore")  # type: ignore[arg-type]


def _batch(masks: list[np.ndarray], spacing: tuple[float, ...]) -> list[MetaTensor]:
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return [MetaTensor(torch.as_tensor(m, dtype=torch.float32), affine=affine) for m in masks]


def test_cumulative_metrics_per_region_nan_excluded() -> None:
    rng = np.random.default_rng(3)
    spacing = (0.8, 0.8, 2.0)
    cases = []
    for _ in range(4):
        pred = np.stack([random_blob(rng, (16, 16, 10), 0.2) for _ in range(3)])
        ref = np.stack([random_blob(rng, (16, 16, 10), 0.2) for _ in range(3)])
        cases.append((pred, ref))
    cases[1][1][2] = False  # region 2 of case 1 has no reference
    cases[1][0][2] = False
    preds = _batch([p for p, _ in cases], spacing)
    refs = _batch([r for _, r in cases], spacing)

    for rule in ("brats", "nan"):
        metric = RegionHausdorffMetric(percentile=95, empty_rule=rule)
        metric(preds, refs)
        got = metric.aggregate().numpy()
        table = np.array([[hausdorff(p[c], r[c], spacing, 95, rule) for c in range(3)] for p, r in cases])
        assert np.allclose(got, np.nanmean(table, axis=0))
    dice_metric = RegionDiceMetric(empty_rule="nan")
    dice_metric(preds, refs)
    details = dice_metric.get_buffer()
    assert details.shape == (4, 3) and torch.isnan(details[1, 2])
    assert dice_metric.aggregate()[2] == pytest.approx(
        np.mean([dice(p[2], r[2]) for i, (p, r) in enumerate(cases) if i != 1])
    )
    iou_metric = RegionIoUMetric(empty_rule="brats")
    iou_metric(preds, refs)
    assert iou_metric.get_buffer()[1, 2] == 1.0


def test_spacing_read_from_affine() -> None:
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = rotation @ torch.diag(torch.tensor([0.7, 0.9, 2.5], dtype=torch.float64))
    image = MetaTensor(torch.zeros(1, 1, 4, 4, 4), affine=affine)
    assert spacing_of(image, 3) == pytest.approx((0.7, 0.9, 2.5))
    assert spacing_of(torch.zeros(1, 1, 4, 4), 2) == (1.0, 1.0)
