"""The defaults and pass-through rules of ``common.metrics`` and ``common.handlers`` that a config relies on without
spelling them out: HD95 and the BraTS empty rule by default, per-case details saved by default, the handler's
arguments reaching the metric, the errors a misuse gets. Values are checked against a brute-force Hausdorff distance
and the empty-mask rules of REFERENCE.md section 2."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.metrics import HausdorffDistanceMetric
from scipy import ndimage

from common.handlers import RegionDice, RegionHausdorff, RegionIoU, RegionMetricHandler
from common.metrics import BRATS_EMPTY_HD, RegionHausdorffMetric, region_dice, spacings_of
from tests.oracles import brute_hausdorff


def blobs(seed: int = 1, shape: tuple[int, ...] = (14, 12, 10)) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth random masks whose 95th, 96th percentile and maximum distances all differ (asserted below)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        smooth = ndimage.gaussian_filter(rng.random(shape), 1.5)
        out.append(smooth > np.quantile(smooth, 0.8))
    return out[0], out[1]


def case(*masks: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> MetaTensor:
    """A (B, 1, spatial...) batch, one case per mask, with an affine of the given spacing."""
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.as_tensor(np.stack(masks)[:, None], dtype=torch.float32), affine=affine)


def run_handler(handler: RegionMetricHandler, pred: torch.Tensor, ref: torch.Tensor, name: str = "m") -> Engine:
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine, name)
    engine.run([(pred, ref)])
    return engine


EMPTY = np.zeros((8, 8, 8), bool)
CUBE = np.zeros((8, 8, 8), bool)
CUBE[2:5, 2:5, 2:5] = True


def test_oracle_separates_the_percentiles() -> None:
    a, b = blobs()
    values = [brute_hausdorff(a, b, (1.0, 1.0, 1.0), p) for p in (95, 96, None)]
    assert len(set(values)) == 3, values  # so the tests below can tell HD95 from HD96 and from the maximum


# ---------------------------------------------------------------- common.metrics


def test_default_hausdorff_is_hd95_with_the_brats_rule() -> None:
    a, b = blobs()
    metric = RegionHausdorffMetric()
    metric(case(a), case(b))
    assert float(metric.get_buffer()[0, 0]) == pytest.approx(brute_hausdorff(a, b, (1.0, 1.0, 1.0), 95), rel=1e-5)
    metric.reset()
    metric(case(EMPTY, CUBE), case(EMPTY, EMPTY))  # both empty -> 0; prediction only -> the volume diagonal
    assert metric.get_buffer()[:, 0].tolist() == pytest.approx([0.0, BRATS_EMPTY_HD])


def test_nan_rule_turns_monais_infinite_maximum_into_nan() -> None:
    """With ``percentile=None`` MONAI gives inf (not NaN) when exactly one mask is empty; the "nan" rule excludes
    the case instead, so an empty prediction cannot pull a mean to infinity."""
    metric = RegionHausdorffMetric(None, "nan")
    metric(case(CUBE, EMPTY, CUBE), case(EMPTY, CUBE, CUBE))
    first, second, third = metric.get_buffer()[:, 0].tolist()
    assert math.isnan(first) and math.isnan(second) and third == 0.0
    assert metric.aggregate().tolist() == [0.0]


def test_fixed_spacing_applies_to_every_case_of_a_batch() -> None:
    a, b = blobs()
    metric = RegionHausdorffMetric(None, spacing=(2.0, 1.0, 1.0))
    metric(case(a, b), case(b, a))  # two cases, one channel; the affine (1 mm) is overridden
    expected = brute_hausdorff(a, b, (2.0, 1.0, 1.0), None)
    assert metric.get_buffer()[:, 0].tolist() == pytest.approx([expected, expected], rel=1e-5)


def test_shape_mismatch_names_both_shapes() -> None:
    metric = RegionHausdorffMetric()
    message = r"prediction shape \(1, 1, 8, 8, 8\) differs from reference shape \(1, 1, 8, 8, 7\)"
    with pytest.raises(ValueError, match=message):
        metric(case(CUBE), case(CUBE[..., :7]))


def test_only_monais_empty_mask_warnings_are_silenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The empty-mask UserWarnings are decided by the rule; any other warning from MONAI still reaches the user."""
    original = HausdorffDistanceMetric._compute_tensor

    def noisy(self, y_pred, y, **kwargs):
        warnings.warn("something else", RuntimeWarning, stacklevel=1)
        return original(self, y_pred, y, **kwargs)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RegionHausdorffMetric()(case(CUBE), case(EMPTY))
    assert [w for w in caught if issubclass(w.category, UserWarning)] == []
    monkeypatch.setattr(HausdorffDistanceMetric, "_compute_tensor", noisy)
    with pytest.warns(RuntimeWarning, match="something else"):
        RegionHausdorffMetric()(case(CUBE), case(CUBE))


def test_integer_affine_gives_float_spacing() -> None:
    image = torch.zeros(2, 1, 4, 4, 4)
    image.affine = np.diag([2, 3, 4, 1])  # a hand-written integer affine shared by the batch
    assert spacings_of(image) == [(2.0, 3.0, 4.0), (2.0, 3.0, 4.0)]


# ---------------------------------------------------------------- common.handlers


@pytest.mark.parametrize(("handler_cls", "metric_name"), [(RegionDice, "dice"), (RegionIoU, "iou")])
def test_dice_and_iou_handlers_default_to_the_brats_rule(handler_cls: type, metric_name: str) -> None:
    # case 0: both empty -> 1 (BraTS; the "nan" rule would exclude it); case 1: prediction misses -> 0
    engine = run_handler(handler_cls(["ET"]), case(EMPTY, EMPTY), case(EMPTY, CUBE), metric_name)
    assert engine.state.metric_details[metric_name][:, 0].tolist() == [1.0, 0.0]
    assert engine.state.metrics[f"{metric_name}_ET"] == 0.5
    assert engine.state.metrics[metric_name] == 0.5


def test_hausdorff_handler_defaults_to_hd95_and_the_brats_rule() -> None:
    a, b = blobs()
    empty, cube = np.zeros_like(a), np.zeros_like(a)
    cube[2:5, 2:5, 2:5] = True
    engine = run_handler(RegionHausdorff(["WT"]), case(a, empty, empty), case(b, empty, cube), "hd")
    hd95 = brute_hausdorff(a, b, (1.0, 1.0, 1.0), 95)
    assert engine.state.metric_details["hd"][:, 0].tolist() == pytest.approx([hd95, 0.0, BRATS_EMPTY_HD], rel=1e-5)
    assert engine.state.metrics["hd_WT"] == pytest.approx((hd95 + BRATS_EMPTY_HD) / 3, rel=1e-5)


def test_hausdorff_handler_passes_percentile_and_spacing() -> None:
    a, b = blobs()
    engine = run_handler(RegionHausdorff(["WT"], percentile=None, spacing=(2.0, 1.0, 1.0)), case(a), case(b), "hd")
    assert engine.state.metrics["hd_WT"] == pytest.approx(brute_hausdorff(a, b, (2.0, 1.0, 1.0), None), rel=1e-5)


def test_hausdorff_handler_passes_the_nan_rule() -> None:
    engine = run_handler(RegionHausdorff(["ET"], empty_rule="nan"), case(CUBE, CUBE), case(EMPTY, CUBE), "hd")
    first, second = engine.state.metric_details["hd"][:, 0].tolist()
    assert math.isnan(first) and second == 0.0
    assert engine.state.metrics["hd"] == 0.0  # NaN-aware mean over the one scored case


@pytest.mark.parametrize(
    ("make", "identical_masks_score"),
    [
        (lambda: RegionDice(["ET"], save_details=False), 1.0),
        (lambda: RegionIoU(["ET"], save_details=False), 1.0),
        (lambda: RegionHausdorff(["ET"], save_details=False), 0.0),
        (lambda: RegionMetricHandler(region_dice(), ["ET"], save_details=False), 1.0),
    ],
)
def test_save_details_false_keeps_no_per_case_table(make, identical_masks_score: float) -> None:
    engine = run_handler(make(), case(CUBE), case(CUBE), "m")
    assert "m" not in getattr(engine.state, "metric_details", {})
    assert engine.state.metrics["m_ET"] == identical_masks_score


def test_generic_handler_saves_details_by_default_and_reports_each_region() -> None:
    handler = RegionMetricHandler(region_dice(), ["TC", "WT"])
    assert handler.per_region == {}  # nothing measured yet
    pred = MetaTensor(torch.as_tensor(np.stack([CUBE, CUBE])[None], dtype=torch.float32))
    ref = MetaTensor(torch.as_tensor(np.stack([CUBE, EMPTY])[None], dtype=torch.float32))
    engine = run_handler(handler, pred, ref, "dice")
    assert engine.state.metric_details["dice"].tolist() == [[1.0, 0.0]]
    assert handler.per_region == {"TC": 1.0, "WT": 0.0}
    assert (engine.state.metrics["dice_TC"], engine.state.metrics["dice_WT"]) == (1.0, 0.0)


def test_compute_before_attach_is_refused_when_details_are_saved() -> None:
    handler = RegionDice(["ET"])
    handler.update((case(CUBE), case(CUBE)))
    with pytest.raises(RuntimeError, match=r"^attach\(\) the handler to an engine first$"):
        handler.compute()
    quiet = RegionDice(["ET"], save_details=False)
    quiet.update((case(CUBE), case(EMPTY)))
    assert quiet.compute() == 0.0  # without details there is nothing to store on an engine
