"""BraTS 2023 lesion-wise rules (REFERENCE.md section 2) that the hand-built cases of test_lesion_wise.py leave open:
the exact connectivity and dilation (26-connected components; 3 dilations with the 18-neighbourhood, as the
challenge's code), the 50 mm^3 bound, HD95 in mm against a brute-force surface distance, and the metric/handler
defaults a config relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor, list_data_collate

from scripts.lesion_wise import FP_HD, LesionWise, LesionWiseMetric, lesion_wise_scores, reference_lesions
from tests.oracles import brute_hausdorff

SHAPE = (40, 40, 30)


def voxels(*points: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    for p in points:
        mask[p] = True
    return mask


def box(mask: np.ndarray, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return mask


def balls() -> tuple[np.ndarray, np.ndarray]:
    """A reference ball (radius 6) and a shifted smaller predicted ball with a spike: one lesion, one match."""
    grid = np.indices(SHAPE)

    def ball(centre, radius):
        return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2

    pred = ball((16, 15, 12), 5)
    pred[16, 15, 17:21] = True
    return pred, ball((14, 14, 12), 6)


SPACING = (2.0, 1.0, 1.0)  # at this spacing HD95, HD96 and the maximum of the two balls all differ (asserted)


# ---------------------------------------------------------------- connectivity and dilation


def test_components_are_26_connected() -> None:
    corner = voxels((10, 10, 10), (11, 11, 11))  # two voxels touching at a corner only
    assert reference_lesions(corner, dilation_iterations=0)[1] == 1
    pred = box(box(np.zeros(SHAPE, bool), (5, 5, 5), (8, 8, 8)), (8, 8, 8), (11, 11, 11))
    got = lesion_wise_scores(pred, np.zeros(SHAPE, bool))
    assert got == {"dice": 0.0, "hd95": FP_HD, "lesions": 0, "false_positives": 1}  # one component, not two


def test_reference_blobs_merge_through_the_18_neighbourhood_dilation() -> None:
    # 3 dilations with the 18-neighbourhood reach offsets with max |d| <= 3 and sum |d| <= 6:
    # voxels 6 apart along two axes grow into one blob (they meet at (3, 3, 0)); a 6-neighbourhood cross would not
    # (it reaches sum |d| <= 3); 6 apart along all three axes stay apart (a full 26-neighbourhood cube would merge)
    assert reference_lesions(voxels((10, 10, 10), (16, 16, 10)))[1] == 1
    assert reference_lesions(voxels((10, 10, 10), (16, 16, 16)))[1] == 2
    # one dilation closes a one-voxel gap, none does not
    assert reference_lesions(voxels((10, 10, 10), (12, 10, 10)), dilation_iterations=1)[1] == 1
    assert reference_lesions(voxels((10, 10, 10), (12, 10, 10)), dilation_iterations=0)[1] == 2


def test_default_dilation_is_three() -> None:
    def cubes(gap: int) -> np.ndarray:
        return box(box(np.zeros(SHAPE, bool), (5, 5, 5), (9, 9, 9)), (9 + gap, 5, 5), (13 + gap, 9, 9))

    # each cube grows by 3: a 6-voxel gap closes to adjacent voxels (one lesion), a 7-voxel gap leaves one between
    assert reference_lesions(cubes(6))[1] == 1
    assert reference_lesions(cubes(7))[1] == 2
    assert reference_lesions(cubes(7), dilation_iterations=4)[1] == 1
    assert lesion_wise_scores(cubes(7), cubes(7))["lesions"] == 2
    assert lesion_wise_scores(cubes(7), cubes(7), dilation_iterations=4)["lesions"] == 1
    # a prediction starting 3 voxels after the lesion (x = 17 for a lesion ending at 13) does not touch its
    # 3-voxel dilation (up to x = 16): a missed lesion plus a false positive
    ref = box(np.zeros(SHAPE, bool), (10, 10, 10), (14, 14, 14))
    pred = box(np.zeros(SHAPE, bool), (17, 10, 10), (21, 14, 14))
    assert lesion_wise_scores(pred, ref) == {"dice": 0.0, "hd95": FP_HD, "lesions": 1, "false_positives": 1}
    matched = lesion_wise_scores(pred, ref, dilation_iterations=4)
    assert matched["false_positives"] == 0 and matched["hd95"] == pytest.approx(
        brute_hausdorff(pred, ref, (1, 1, 1), 95)
    )


def test_reference_lesion_labels() -> None:
    ref = voxels((10, 10, 10), (16, 16, 16), (30, 30, 20))
    labels, n = reference_lesions(ref)
    assert n == 3 and np.issubdtype(labels.dtype, np.integer)
    assert (labels[~ref] == 0).all()
    assert sorted(labels[ref].tolist()) == [1, 2, 3]


# ---------------------------------------------------------------- the 50 mm^3 bound and the per-lesion scores


def test_lesions_of_50_voxels_or_less_are_not_scored_by_default() -> None:
    ref50 = box(np.zeros(SHAPE, bool), (5, 5, 5), (10, 10, 7))  # 5 x 5 x 2 = 50 voxels at 1 mm: not scored
    assert lesion_wise_scores(np.zeros(SHAPE, bool), ref50)["lesions"] == 0
    ref51 = ref50.copy()
    ref51[10, 5, 5] = True  # 51 voxels: scored, and missed
    missed = {"dice": 0.0, "hd95": FP_HD, "lesions": 1, "false_positives": 0}
    assert lesion_wise_scores(np.zeros(SHAPE, bool), ref51) == missed
    assert lesion_wise_scores(np.zeros(SHAPE, bool), ref51, min_lesion_voxels=51)["lesions"] == 0


def test_a_small_lesion_does_not_stop_the_scoring_of_the_next() -> None:
    small = box(np.zeros(SHAPE, bool), (1, 1, 1), (3, 3, 3))  # labelled first (raster order), 8 voxels
    big = box(np.zeros(SHAPE, bool), (20, 20, 10), (26, 26, 16))
    got = lesion_wise_scores(big, small | big)
    assert got == {"dice": 1.0, "hd95": 0.0, "lesions": 1, "false_positives": 0}


def test_lesion_dice_and_hd95_in_mm_by_brute_force() -> None:
    pred, ref = balls()
    values = [brute_hausdorff(pred, ref, SPACING, p) for p in (95, 96, None)]
    assert len(set(values)) == 3, values
    got = lesion_wise_scores(pred, ref, spacing=SPACING)
    assert got["dice"] == pytest.approx(2 * (pred & ref).sum() / (pred.sum() + ref.sum()), rel=1e-6)
    assert got["hd95"] == pytest.approx(values[0], rel=1e-5)
    assert lesion_wise_scores(pred, ref, spacing=SPACING, percentile=50)["hd95"] == pytest.approx(
        brute_hausdorff(pred, ref, SPACING, 50), rel=1e-5
    )
    at_1mm = lesion_wise_scores(pred, ref)
    assert at_1mm["hd95"] == pytest.approx(brute_hausdorff(pred, ref, (1.0, 1.0, 1.0), 95), rel=1e-5)


def test_case_score_averages_lesions_and_false_positives() -> None:
    # lesion 1 found exactly (Dice 1, HD 0), lesion 2 found by a shifted cube, one FP far away:
    # Dice = (1 + d2 + 0) / 3, HD95 = (0 + h2 + 374) / 3
    ref = box(box(np.zeros(SHAPE, bool), (2, 2, 2), (6, 6, 6)), (20, 20, 10), (26, 26, 16))
    shifted = box(np.zeros(SHAPE, bool), (21, 20, 10), (27, 26, 16))
    pred = (
        box(np.zeros(SHAPE, bool), (2, 2, 2), (6, 6, 6))
        | shifted
        | box(np.zeros(SHAPE, bool), (2, 30, 22), (5, 33, 25))
    )
    lesion2 = box(np.zeros(SHAPE, bool), (20, 20, 10), (26, 26, 16))
    d2 = 2 * (shifted & lesion2).sum() / (shifted.sum() + lesion2.sum())
    h2 = brute_hausdorff(shifted, lesion2, (1.0, 1.0, 1.0), 95)
    got = lesion_wise_scores(pred, ref)
    assert (got["lesions"], got["false_positives"]) == (2, 1)
    assert got["dice"] == pytest.approx((1 + d2) / 3, rel=1e-6)
    assert got["hd95"] == pytest.approx((h2 + FP_HD) / 3, rel=1e-5)


# ---------------------------------------------------------------- LesionWiseMetric and the LesionWise handler


def batch(*masks: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> MetaTensor:
    """(1, C, ...) with one channel per mask and an affine of the given spacing."""
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.as_tensor(np.stack(masks)[None], dtype=torch.float32), affine=affine)


def test_metric_defaults_dice_three_dilations_50_mm3() -> None:
    ref = box(np.zeros(SHAPE, bool), (10, 10, 10), (14, 14, 14))
    far = box(np.zeros(SHAPE, bool), (17, 10, 10), (21, 14, 14))  # outside the default dilation (see above)
    ref51 = box(np.zeros(SHAPE, bool), (5, 5, 5), (10, 10, 7))
    ref51[10, 5, 5] = True
    half = box(np.zeros(SHAPE, bool), (5, 5, 5), (10, 10, 6))  # 25 of the 51 voxels
    metric = LesionWiseMetric()
    metric(batch(far, half), batch(ref, ref51))
    dice = metric.get_buffer()[0].tolist()
    assert dice == pytest.approx([0.0, 2 * 25 / (25 + 51)])  # the 51-voxel lesion is scored
    hd = LesionWiseMetric("hd95")
    hd(batch(far), batch(ref))
    assert hd.get_buffer().tolist() == [[FP_HD]]  # missed lesion + false positive: (374 + 374) / 2
    loose = LesionWiseMetric("dice", min_lesion_voxels=60)
    loose(batch(half), batch(ref51))
    assert loose.get_buffer().tolist() == [[1.0]]  # nothing scored, no false positive


def test_metric_reads_spacing_from_the_affine_and_keeps_double_precision() -> None:
    pred, ref = balls()
    metric = LesionWiseMetric("hd95")
    metric(batch(pred, spacing=SPACING), batch(ref, spacing=SPACING))
    assert float(metric.aggregate()[0]) == pytest.approx(brute_hausdorff(pred, ref, SPACING, 95), rel=1e-5)
    # lesion found exactly + one false positive + one missed lesion: Dice exactly 1/3 in float64
    ref2 = box(box(np.zeros(SHAPE, bool), (2, 2, 2), (6, 6, 6)), (20, 20, 10), (26, 26, 16))
    pred2 = box(box(np.zeros(SHAPE, bool), (2, 2, 2), (6, 6, 6)), (2, 30, 22), (5, 33, 25))
    dice = LesionWiseMetric()
    dice(batch(pred2), batch(ref2))
    assert dice.aggregate().dtype == torch.float64 and dice.aggregate().tolist() == [1 / 3]


@pytest.mark.parametrize(
    "spacings",
    [((0.7, 0.7, 2.5), (1.0, 1.0, 1.0)), ((1.0, 1.0, 1.0), (0.7, 0.7, 2.5))],
    ids=["anisotropic_first", "isotropic_first"],
)
def test_metric_scores_a_collated_batch_of_mixed_spacings_per_case(spacings: tuple[tuple[float, ...], ...]) -> None:
    """A batch collated by MONAI (as a DataLoader does) from the same lesion at 0.7x0.7x2.5 mm and at 1 mm: each
    case's lesion-wise HD95 is the brute-force one at its own spacing (not the first case's), exactly what the case
    scores alone."""
    pred, ref = balls()  # one lesion, matched by one predicted component: lesion-wise HD95 = HD95 of the pair
    expected = [brute_hausdorff(pred, ref, s, 95) for s in spacings]
    assert expected[0] != pytest.approx(expected[1])
    collated = list_data_collate(
        [{"pred": batch(pred, spacing=s)[0], "label": batch(ref, spacing=s)[0]} for s in spacings]
    )
    metric = LesionWiseMetric("hd95")
    metric(collated["pred"], collated["label"])
    together = metric.get_buffer()[:, 0].tolist()
    alone = []
    for s in spacings:
        single = LesionWiseMetric("hd95")
        single(batch(pred, spacing=s), batch(ref, spacing=s))
        alone.append(float(single.get_buffer()[0, 0]))
    assert together == alone
    assert together == pytest.approx(expected, rel=1e-5)


def test_metric_takes_the_reference_spacing_for_a_bare_prediction_and_refuses_other_grids() -> None:
    """A prediction without affine is scored at the reference's spacing (not 1 mm), a reference without affine at
    the prediction's; a prediction whose affine gives another spacing than the reference's is refused."""
    pred, ref = balls()
    metric = LesionWiseMetric("hd95")
    metric(torch.as_tensor(pred[None, None], dtype=torch.float32), batch(ref, spacing=SPACING))
    assert float(metric.get_buffer()[0, 0]) == pytest.approx(brute_hausdorff(pred, ref, SPACING, 95), rel=1e-5)
    with pytest.raises(ValueError, match="prediction spacing .* differs from reference spacing"):
        LesionWiseMetric("hd95")(batch(pred, spacing=(1.0, 1.0, 1.0)), batch(ref, spacing=SPACING))
    bare_reference = LesionWiseMetric("hd95")
    bare_reference(batch(pred, spacing=SPACING), torch.as_tensor(ref[None, None], dtype=torch.float32))
    assert float(bare_reference.get_buffer()[0, 0]) == float(metric.get_buffer()[0, 0])


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match=r"^score must be 'dice' or 'hd95', got 'iou'$"):
        LesionWiseMetric("iou")  # type: ignore[arg-type]
    metric = LesionWiseMetric()
    cube = box(np.zeros(SHAPE, bool), (2, 2, 2), (6, 6, 6))
    message = r"^prediction shape \(1, 2, 40, 40, 30\) differs from reference shape \(1, 1, 40, 40, 30\)$"
    with pytest.raises(ValueError, match=message):
        metric(batch(cube, cube), batch(cube))
    with pytest.raises(ValueError, match=r"^prediction shape \(1, 1, 40, 40, 30\) differs from reference shape None$"):
        metric(batch(cube))  # no reference
    with pytest.raises(ValueError, match="^no cases were scored$"):
        metric.aggregate()


def test_handler_defaults_and_details() -> None:
    ref51 = box(np.zeros(SHAPE, bool), (5, 5, 5), (10, 10, 7))
    ref51[10, 5, 5] = True
    half = box(np.zeros(SHAPE, bool), (5, 5, 5), (10, 10, 6))
    ref = box(np.zeros(SHAPE, bool), (10, 10, 10), (14, 14, 14))
    far = box(np.zeros(SHAPE, bool), (17, 10, 10), (21, 14, 14))
    engine = Engine(lambda e, b: b)
    LesionWise(["TC", "ET"]).attach(engine, "lw")  # dice, 3 dilations, 50 mm^3, details saved
    LesionWise(["TC", "ET"], score="hd95", dilation_iterations=4, min_lesion_voxels=60).attach(engine, "lw_hd")
    LesionWise(["TC", "ET"], save_details=False).attach(engine, "quiet")
    LesionWise(["TC", "ET"], score="hd95").attach(engine, "lw_hd3")  # 3 dilations: the far prediction is an FP
    engine.run([(batch(half, far), batch(ref51, ref))])
    m = engine.state.metrics
    assert (m["lw_TC"], m["lw_ET"]) == pytest.approx((50 / 76, 0.0))
    assert m["lw"] == pytest.approx(25 / 76)
    # 60 mm^3: the 51-voxel lesion is not scored (HD 0); 4 dilations: the far prediction is matched
    assert (m["lw_hd_TC"], m["lw_hd_ET"]) == pytest.approx((0.0, brute_hausdorff(far, ref, (1.0, 1.0, 1.0), 95)))
    assert m["lw_hd3_ET"] == FP_HD
    assert engine.state.metric_details["lw"].shape == (1, 2)
    assert "quiet" not in engine.state.metric_details and m["quiet"] == m["lw"]
