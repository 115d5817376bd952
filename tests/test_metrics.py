"""Region metrics and their handlers against brute-force numpy/scipy computations and the official empty-case rules
(the handlers run inside a MONAI SupervisedEvaluator built from a JSON-style config)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, list_data_collate

from common.metrics import (
    BRATS_EMPTY_HD,
    RegionHausdorffMetric,
    case_spacings,
    region_dice,
    region_iou,
    spacings_of,
)
from tests.oracles import brute_hausdorff


def random_blob(rng: np.random.Generator, shape: tuple[int, ...], fill: float) -> np.ndarray:
    noise = rng.random(shape)
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(noise, 1.5)
    return smooth > np.quantile(smooth, 1 - fill)


def brute_dice(a: np.ndarray, b: np.ndarray, rule: str) -> float:
    """Set arithmetic with the empty-mask rules written out (REFERENCE.md section 2)."""
    if not a.any() and not b.any():
        return 1.0 if rule == "brats" else math.nan
    if not b.any():
        return 0.0 if rule == "brats" else math.nan
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


def brute_iou(a: np.ndarray, b: np.ndarray, rule: str) -> float:
    if not a.any() and not b.any():
        return 1.0 if rule == "brats" else math.nan
    if not b.any():
        return 0.0 if rule == "brats" else math.nan
    return np.sum(a & b) / np.sum(a | b)


def brute_hd(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], percentile: float | None, rule: str) -> float:
    if a.any() and b.any():
        return brute_hausdorff(a, b, spacing, percentile)
    if rule == "nan":
        return math.nan
    return 0.0 if not (a.any() or b.any()) else BRATS_EMPTY_HD


def _one(mask: np.ndarray, spacing: tuple[float, ...]) -> MetaTensor:
    """A (1, 1, spatial...) case whose affine has the given spacing."""
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.as_tensor(mask[None, None], dtype=torch.float32), affine=affine)


def _score(metric, a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> float:
    metric.reset()
    metric(_one(a, spacing), _one(b, spacing))
    return float(metric.get_buffer()[0, 0])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5), (1.2, 0.5, 3.0)])
def test_distances_match_brute_force(seed: int, spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(seed)
    shape = (18, 16, 12)
    a = random_blob(rng, shape, rng.uniform(0.05, 0.4))
    b = random_blob(rng, shape, rng.uniform(0.05, 0.4))
    for percentile in (95.0, None, 50.0):
        ours = _score(RegionHausdorffMetric(percentile), a, b, spacing)
        assert ours == pytest.approx(brute_hausdorff(a, b, spacing, percentile), rel=1e-5, abs=1e-5)
    assert _score(region_dice(), a, b) == pytest.approx(brute_dice(a, b, "brats"), rel=1e-6)
    assert _score(region_iou(), a, b) == pytest.approx(brute_iou(a, b, "brats"), rel=1e-6)


def test_hausdorff_2d_and_single_voxel() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2, 2] = True
    b[5, 6] = True
    assert _score(RegionHausdorffMetric(None), a, b, (2.0, 1.0)) == pytest.approx(math.hypot(3 * 2.0, 4 * 1.0))
    assert _score(RegionHausdorffMetric(95), a, a, (2.0, 1.0)) == 0.0
    fixed = RegionHausdorffMetric(None, spacing=(1.0, 3.0))  # a given spacing wins over the affine
    assert _score(fixed, a, b, (2.0, 1.0)) == pytest.approx(math.hypot(3 * 1.0, 4 * 3.0))


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
        metrics = (region_dice(rule), region_iou(rule), RegionHausdorffMetric(95, rule))
        got = tuple(_score(m, pred, ref, (1.0, 1.0, 2.0)) for m in metrics)
        for g, e in zip(got, expected):
            assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e), (rule, got, expected)


def test_brats_constant_is_the_volume_diagonal() -> None:
    assert BRATS_EMPTY_HD == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.005)


def test_unknown_rule_is_refused() -> None:
    for make in (region_dice, region_iou, lambda rule: RegionHausdorffMetric(95, rule)):
        with pytest.raises(ValueError, match="empty_rule"):
            make("ignore")


def test_cumulative_metrics_per_region_nan_excluded() -> None:
    """Several iterations of 2-case batches; region 2 of case 1 is empty in both masks."""
    rng = np.random.default_rng(3)
    spacing = (0.8, 0.8, 2.0)
    cases = []
    for _ in range(4):
        pred = np.stack([random_blob(rng, (16, 16, 10), 0.2) for _ in range(3)])
        ref = np.stack([random_blob(rng, (16, 16, 10), 0.2) for _ in range(3)])
        cases.append((pred, ref))
    cases[1][1][2] = False
    cases[1][0][2] = False
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))

    def batches(k: int) -> torch.Tensor:
        return [MetaTensor(torch.as_tensor(np.stack([c[k] for c in cases[i : i + 2]]), dtype=torch.float32),
                           affine=affine) for i in (0, 2)]  # fmt: skip

    for rule in ("brats", "nan"):
        for metric, oracle in (
            (RegionHausdorffMetric(95, rule), lambda p, r, rule=rule: brute_hd(p, r, spacing, 95, rule)),
            (region_dice(rule), lambda p, r, rule=rule: brute_dice(p, r, rule)),
            (region_iou(rule), lambda p, r, rule=rule: brute_iou(p, r, rule)),
        ):
            for pred, ref in zip(batches(0), batches(1)):
                metric(pred, ref)
            table = np.array([[oracle(p[c], r[c]) for c in range(3)] for p, r in cases])
            details = metric.get_buffer().double().numpy()
            assert details.shape == (4, 3)
            np.testing.assert_allclose(details, table, rtol=1e-5, atol=1e-5, equal_nan=True)
            np.testing.assert_allclose(metric.aggregate().double().numpy(), np.nanmean(table, axis=0), rtol=1e-5)


def test_each_case_is_measured_with_its_own_spacing() -> None:
    """A collated batch whose cases have different spacings: each case's distances use its own affine."""
    a = np.zeros((12, 12, 8), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:4] = True
    b[5:9, 3:7, 3:6] = True
    spacings = [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)]
    affines = torch.stack([torch.diag(torch.tensor([*s, 1.0], dtype=torch.float64)) for s in spacings])
    pred = MetaTensor(torch.as_tensor(np.stack([a, a])[:, None], dtype=torch.float32), affine=affines)
    ref = MetaTensor(torch.as_tensor(np.stack([b, b])[:, None], dtype=torch.float32), affine=affines)
    metric = RegionHausdorffMetric(95)
    metric(pred, ref)
    got = metric.get_buffer()[:, 0].tolist()
    assert got == pytest.approx([brute_hausdorff(a, b, s, 95) for s in spacings], rel=1e-5)
    assert got[0] != pytest.approx(got[1])


MIXED_SPACINGS = ((0.7, 0.7, 2.5), (1.0, 1.0, 1.0))  # the anisotropic case and a 1 mm case


def mixed_spacing_cases() -> list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    """(prediction, reference, spacing) of two cases whose distances change with the spacing: scored with the
    other case's spacing, either case gets another HD95 and another maximum (asserted)."""
    rng = np.random.default_rng(11)
    cases = []
    for spacing, other in zip(MIXED_SPACINGS, MIXED_SPACINGS[::-1]):
        a, b = (random_blob(rng, (16, 14, 10), 0.2) for _ in range(2))
        for percentile in (95.0, None):
            assert brute_hausdorff(a, b, spacing, percentile) != pytest.approx(brute_hausdorff(a, b, other, percentile))
        cases.append((a, b, spacing))
    return cases


@pytest.mark.parametrize("percentile", [95.0, None])
@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["anisotropic_first", "isotropic_first"])
def test_collated_batch_of_mixed_spacings_scores_each_case_as_alone(
    order: tuple[int, int], percentile: float | None
) -> None:
    """A batch collated by MONAI (as a DataLoader does) from a 0.7x0.7x2.5 mm case and a 1 mm case: each case
    scores exactly what it scores alone, and the brute-force distance at its own spacing (not the first case's)."""
    both = mixed_spacing_cases()
    cases = [both[i] for i in order]
    batch = list_data_collate([{"pred": _one(a, s)[0], "label": _one(b, s)[0]} for a, b, s in cases])
    assert spacings_of(batch["pred"]) == [pytest.approx(s) for *_, s in cases]
    metric = RegionHausdorffMetric(percentile)
    metric(batch["pred"], batch["label"])
    together = metric.get_buffer()[:, 0].tolist()
    alone = [_score(RegionHausdorffMetric(percentile), a, b, s) for a, b, s in cases]
    assert together == alone
    assert together == pytest.approx([brute_hausdorff(a, b, s, percentile) for a, b, s in cases], rel=1e-5)


def test_prediction_without_affine_takes_the_reference_spacing() -> None:
    """A prediction made from a bare array (no affine) is scored at the reference's spacing, not at 1 mm."""
    a, b, spacing = mixed_spacing_cases()[0]  # 0.7 x 0.7 x 2.5 mm, where 1 mm gives another distance
    metric = RegionHausdorffMetric(95.0)
    metric(torch.as_tensor(a[None, None], dtype=torch.float32), _one(b, spacing))
    assert float(metric.get_buffer()[0, 0]) == _score(RegionHausdorffMetric(95.0), a, b, spacing)


def test_prediction_and_reference_on_different_grids_are_refused() -> None:
    """Affines that disagree on a case's spacing (by 1%) are refused, naming the case; float32 rounding of the same
    spacing is not a disagreement."""
    a, b, spacing = mixed_spacing_cases()[0]
    other = (spacing[0] * 1.01, *spacing[1:])
    with pytest.raises(ValueError, match=r"case 0 of the batch: prediction spacing \(0\.707"):
        RegionHausdorffMetric(95.0)(_one(a, other), _one(b, spacing))
    rounded = MetaTensor(torch.as_tensor(a[None, None], dtype=torch.float32),
                         affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float32)))  # fmt: skip
    assert case_spacings(rounded, _one(b, spacing)) == [pytest.approx(spacing)]
    assert case_spacings(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)) == [(1.0, 1.0, 1.0)]
    # a reference from a bare array lies on the prediction's grid
    assert case_spacings(_one(a, spacing), torch.as_tensor(b[None, None])) == [pytest.approx(spacing)]


def test_spacing_read_from_affine() -> None:
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = rotation @ torch.diag(torch.tensor([0.7, 0.9, 2.5], dtype=torch.float64))
    image = MetaTensor(torch.zeros(1, 1, 4, 4, 4), affine=affine)
    assert spacings_of(image) == [pytest.approx((0.7, 0.9, 2.5))]
    assert spacings_of(torch.zeros(2, 1, 4, 4)) == [(1.0, 1.0), (1.0, 1.0)]
    with pytest.raises(ValueError, match="3 affines for a batch of 2"):
        spacings_of(MetaTensor(torch.zeros(2, 1, 4, 4, 4), affine=torch.eye(4).expand(3, 4, 4)))


# ---------------------------------------------------------------- the handlers inside a MONAI evaluator

SPACING = (0.9, 1.1, 2.0)
REGIONS = ["TC", "WT", "ET"]


def make_cases(n: int = 5, seed: int = 0, spacings: list[tuple[float, ...]] | None = None) -> list[dict]:
    """Channel-first binary masks; the 'image' is the prediction itself (identity network). Every case at
    ``SPACING`` unless ``spacings`` gives one per case."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        affine = torch.diag(torch.tensor([*(spacings[i] if spacings else SPACING), 1.0], dtype=torch.float64))
        pred = np.zeros((3, 20, 18, 12), bool)
        ref = np.zeros_like(pred)
        for c in range(3):
            x, y, z = rng.integers(3, 12), rng.integers(3, 10), rng.integers(2, 7)
            pred[c, x : x + rng.integers(2, 7), y : y + rng.integers(2, 7), z : z + rng.integers(1, 4)] = True
            ref[c, x + 1 : x + rng.integers(3, 8), y : y + rng.integers(2, 8), z : z + rng.integers(1, 5)] = True
        if i == 1:
            ref[2] = False  # no enhancing tumour in the reference
        if i == 2:
            pred[2] = ref[2] = False  # nothing anywhere in region ET
        cases.append(
            {
                "image": MetaTensor(torch.as_tensor(pred, dtype=torch.float32), affine=affine),
                "label": MetaTensor(torch.as_tensor(ref, dtype=torch.float32), affine=affine),
            }
        )
    return cases


CONFIG = {
    "imports": ["$import torch", "$import monai"],
    "device": "$torch.device('cpu')",
    "region_names": REGIONS,
    "network": "$torch.nn.Identity()",
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": {"_target_": "Dataset", "data": "@cases"},
        "batch_size": 2,
    },
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "key_val_metric": {
            "val_dice": {
                "_target_": "common.handlers.RegionDice",
                "region_names": "@region_names",
                "empty_rule": "@empty_rule",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            }
        },
        "additional_metrics": {
            "val_iou": {
                "_target_": "common.handlers.RegionIoU",
                "region_names": "@region_names",
                "empty_rule": "@empty_rule",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            },
            "val_hd95": {
                "_target_": "common.handlers.RegionHausdorff",
                "region_names": "@region_names",
                "percentile": 95,
                "empty_rule": "@empty_rule",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            },
        },
    },
}


@pytest.mark.parametrize("rule", ["brats", "nan"])
def test_handlers_report_each_region(rule: str) -> None:
    cases = make_cases()
    parser = ConfigParser(dict(CONFIG, cases=cases, empty_rule=rule))
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    metrics = evaluator.state.metrics

    for name, fn in (
        ("val_dice", lambda p, r: brute_dice(p, r, rule)),
        ("val_iou", lambda p, r: brute_iou(p, r, rule)),
        ("val_hd95", lambda p, r: brute_hd(p, r, SPACING, 95, rule)),
    ):
        table = np.array([[fn(c["image"][k].numpy() > 0, c["label"][k].numpy() > 0) for k in range(3)] for c in cases])
        expected = np.nanmean(table, axis=0)
        for k, region in enumerate(REGIONS):
            assert metrics[f"{name}_{region}"] == pytest.approx(expected[k], rel=1e-5), (name, region)
        assert metrics[name] == pytest.approx(np.mean(expected), rel=1e-5)
        details = evaluator.state.metric_details[name]
        assert details.shape == (len(cases), 3)
    # the empty-ET cases are where the two conventions differ
    if rule == "brats":
        assert evaluator.state.metric_details["val_hd95"][1, 2] == pytest.approx(373.13)
        assert evaluator.state.metric_details["val_dice"][2, 2] == 1.0
    else:
        assert torch.isnan(evaluator.state.metric_details["val_dice"][1, 2])
    assert evaluator.state.best_metric == pytest.approx(metrics["val_dice"])


def test_handlers_score_a_collated_batch_of_mixed_spacings_per_case() -> None:
    """Batches of two mixing 0.7x0.7x2.5 mm and 1 mm cases, handed to the handlers collated (decollate=False): each
    case's HD95 is the brute-force one at its own spacing, exactly what the same case scores in a batch of one."""
    spacings = [(0.7, 0.7, 2.5), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0.7, 0.7, 2.5)]
    cases = make_cases(4, spacings=spacings)

    def hd95_details(batch_size: int) -> list[list[float]]:
        config = dict(CONFIG, cases=cases, empty_rule="brats")
        config["dataloader"] = dict(CONFIG["dataloader"], batch_size=batch_size)
        config["evaluator"] = dict(CONFIG["evaluator"], decollate=False)
        evaluator = ConfigParser(config).get_parsed_content("evaluator")
        evaluator.run()
        return evaluator.state.metric_details["val_hd95"].tolist()

    def table(case_spacings: list[tuple[float, ...]]) -> np.ndarray:
        masks = [(c["image"].numpy() > 0, c["label"].numpy() > 0) for c in cases]
        return np.array(
            [[brute_hd(p[k], r[k], s, 95, "brats") for k in range(3)] for (p, r), s in zip(masks, case_spacings)]
        )

    in_pairs = hd95_details(2)
    assert in_pairs == hd95_details(1)
    np.testing.assert_allclose(in_pairs, table(spacings), rtol=1e-5)
    # the second case of each batch scores differently at the first case's spacing: the test can tell
    assert not np.allclose(table(spacings), table([spacings[0]] * 2 + [spacings[2]] * 2), rtol=1e-5)


def test_region_count_mismatch_is_reported() -> None:
    parser = ConfigParser(dict(CONFIG, cases=make_cases(2), empty_rule="brats", region_names=["TC", "WT"]))
    evaluator = parser.get_parsed_content("evaluator")
    with pytest.raises(ValueError, match="region_names"):
        evaluator.run()
