"""Overlap and surface-distance metrics per region, with the empty-mask rules named explicitly.

MONAI's ``DiceMetric``/``HausdorffDistanceMetric`` return NaN or inf when a mask is empty, which reproduces
neither convention users compare against. Two rules are offered (see REFERENCE.md section 2):

- ``"brats"``: the legacy BraTS 2017-2021 rule. Both masks empty: Dice 1, IoU 1, HD 0. Exactly one empty:
  Dice 0, IoU 0, HD ``BRATS_EMPTY_HD`` (373.13 mm, the diagonal of a 240x240x155 mm volume).
- ``"nan"``: cases without a reference are excluded (NaN for every metric); a prediction that misses a
  non-empty reference scores Dice/IoU 0 and HD NaN (undefined, so excluded from the mean).

Distances are in millimetres using the voxel spacing; surfaces are the mask voxels with a face-neighbour
outside the mask (the same definition MONAI uses), and the p-th percentile Hausdorff distance is the larger
of the two directed percentiles.

``lesion_wise_scores`` implements the BraTS 2023+ lesion-wise rule (per connected lesion, false positives
counted), which the 2023 challenge ranks by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from scipy import ndimage

EmptyRule = Literal["brats", "nan"]
EMPTY_RULES = ("brats", "nan")
BRATS_EMPTY_HD = 373.13


def _check_rule(rule: str) -> None:
    if rule not in EMPTY_RULES:
        raise ValueError(f"empty_rule must be one of {EMPTY_RULES}, got {rule!r}")


def _empty_case(pred_any: bool, ref_any: bool, rule: str, best: float, worst: float, miss: float) -> float | None:
    """Score for a case where a mask is empty, or None when both masks have voxels."""
    if pred_any and ref_any:
        return None
    if rule == "brats":
        return best if not (pred_any or ref_any) else worst
    return float("nan") if not ref_any else miss


def dice(pred: np.ndarray, ref: np.ndarray, empty_rule: EmptyRule = "brats") -> float:
    """Dice coefficient of two binary masks."""
    _check_rule(empty_rule)
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    special = _empty_case(pred.any(), ref.any(), empty_rule, best=1.0, worst=0.0, miss=0.0)
    if special is not None:
        return special
    return float(2.0 * np.logical_and(pred, ref).sum() / (pred.sum() + ref.sum()))


def iou(pred: np.ndarray, ref: np.ndarray, empty_rule: EmptyRule = "brats") -> float:
    """Intersection over union (Jaccard index) of two binary masks."""
    _check_rule(empty_rule)
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    special = _empty_case(pred.any(), ref.any(), empty_rule, best=1.0, worst=0.0, miss=0.0)
    if special is not None:
        return special
    return float(np.logical_and(pred, ref).sum() / np.logical_or(pred, ref).sum())


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face-neighbour outside the mask (the image border counts as outside)."""
    mask = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from every surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    surf_a, surf_b = surface(a), surface(b)
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)
    return dist_to_b[surf_a]


def hausdorff(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    percentile: float | None = 95.0,
    empty_rule: EmptyRule = "brats",
) -> float:
    """Symmetric Hausdorff distance in mm; ``percentile=None`` gives the maximum, 95 gives HD95."""
    _check_rule(empty_rule)
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    special = _empty_case(pred.any(), ref.any(), empty_rule, best=0.0, worst=BRATS_EMPTY_HD, miss=float("nan"))
    if special is not None:
        return special
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * pred.ndim))
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not match a {pred.ndim}D mask")
    d_pr = directed_surface_distances(pred, ref, spacing)
    d_rp = directed_surface_distances(ref, pred, spacing)
    if percentile is None:
        return float(max(d_pr.max(), d_rp.max()))
    return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))


def spacing_of(image: torch.Tensor, spatial_dims: int) -> tuple[float, ...]:
    """Voxel spacing (mm) from a MetaTensor's affine (column norms); 1 mm when there is no affine."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return (1.0,) * spatial_dims
    affine = torch.as_tensor(affine, dtype=torch.float64)
    if affine.ndim == 3:
        affine = affine[0]
    return tuple(float(v) for v in torch.linalg.norm(affine[:spatial_dims, :spatial_dims], dim=0))


class _RegionMetric(CumulativeIterationMetric):
    """Per-case, per-channel scores of binary masks (B, C, spatial...), aggregated as the mean over cases.

    The buffer holds a (cases, regions) table, which MONAI's ``MetricsSaver`` writes per case; ``aggregate``
    returns one value per region, ignoring NaN (the ``"nan"`` rule's excluded cases).
    """

    def __init__(self, empty_rule: EmptyRule = "brats", spacing: Sequence[float] | None = None) -> None:
        super().__init__()
        _check_rule(empty_rule)
        self.empty_rule = empty_rule
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def _score(self, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
        raise NotImplementedError

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("a reference mask is required")
        if y_pred.shape != y.shape:
            raise ValueError(f"prediction shape {tuple(y_pred.shape)} differs from reference shape {tuple(y.shape)}")
        spatial_dims = y_pred.ndim - 2
        spacing = self.spacing or spacing_of(y_pred, spatial_dims)
        pred = y_pred.detach().cpu().numpy() > 0.5
        ref = y.detach().cpu().numpy() > 0.5
        scores = [
            [self._score(pred[b, c], ref[b, c], spacing) for c in range(pred.shape[1])] for b in range(pred.shape[0])
        ]
        return torch.tensor(scores, dtype=torch.float64)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("no cases were scored")
        return torch.nanmean(data, dim=0)


class RegionDiceMetric(_RegionMetric):
    """Dice per region with an explicit empty-mask rule."""

    def _score(self, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
        return dice(pred, ref, self.empty_rule)


class RegionIoUMetric(_RegionMetric):
    """IoU (Jaccard) per region with an explicit empty-mask rule."""

    def _score(self, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
        return iou(pred, ref, self.empty_rule)


class RegionHausdorffMetric(_RegionMetric):
    """Hausdorff distance (mm) per region; ``percentile=95`` is HD95, ``None`` the maximum."""

    def __init__(
        self,
        percentile: float | None = 95.0,
        empty_rule: EmptyRule = "brats",
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__(empty_rule=empty_rule, spacing=spacing)
        self.percentile = percentile

    def _score(self, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
        return hausdorff(pred, ref, spacing, self.percentile, self.empty_rule)


# --- BraTS 2023+ lesion-wise scoring ---------------------------------------------------------------------

BRATS_LESION_FP_HD = 374.0


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected (full-connectivity) components."""
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    if iterations <= 0:
        return mask
    structure = ndimage.generate_binary_structure(mask.ndim, 2)
    return ndimage.binary_dilation(mask, structure=structure, iterations=iterations)


def reference_lesions(ref: np.ndarray, dilation_iterations: int = 3) -> tuple[np.ndarray, int]:
    """Reference components, merged where they fall into one blob of the dilated reference."""
    ref = np.asarray(ref, bool)
    blobs, n = _components(_dilate(ref, dilation_iterations))
    return np.where(ref, blobs, 0), n


def lesion_wise_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    dilation_iterations: int = 3,
    min_lesion_volume: float = 50.0,
    percentile: float = 95.0,
    fp_hd: float = BRATS_LESION_FP_HD,
) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region of one case.

    Each reference lesion (26-connected, merged by ``dilation_iterations`` dilations) is scored against the
    union of the predicted components that touch its dilated mask; a lesion that none touches scores Dice 0
    and HD ``fp_hd``. Predicted components touching no reference lesion are false positives, each scoring
    Dice 0 and HD ``fp_hd``. Reference lesions smaller than or equal to ``min_lesion_volume`` (mm^3) are not
    scored, but predictions touching them are not false positives either. The case score is the sum over
    scored lesions and false positives divided by their number; with neither, Dice 1 and HD 0.
    HD95 here uses voxel surfaces (``hausdorff``), where the challenge's code weights surface elements by area.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * pred.ndim))
    voxel_volume = float(np.prod(spacing))
    lesions, n_lesions = reference_lesions(ref, dilation_iterations)
    pred_cc, _ = _components(pred)
    touched: set[int] = set()
    dices, hds = [], []
    for k in range(1, n_lesions + 1):
        lesion = lesions == k
        hits = np.unique(pred_cc[_dilate(lesion, dilation_iterations)])
        hits = hits[hits != 0]
        touched.update(int(h) for h in hits)
        if lesion.sum() * voxel_volume <= min_lesion_volume:
            continue
        matched = np.isin(pred_cc, hits)
        if hits.size:
            dices.append(dice(matched, lesion))
            hds.append(hausdorff(matched, lesion, spacing, percentile))
        else:
            dices.append(0.0)
            hds.append(fp_hd)
    n_fp = len(set(np.unique(pred_cc).tolist()) - touched - {0})
    count = len(dices) + n_fp
    if count == 0:
        return {"dice": 1.0, "hd95": 0.0, "lesions": 0, "false_positives": 0}
    return {
        "dice": float(sum(dices) / count),
        "hd95": float((sum(hds) + n_fp * fp_hd) / count),
        "lesions": len(dices),
        "false_positives": n_fp,
    }


class RegionLesionWiseMetric(_RegionMetric):
    """BraTS 2023 lesion-wise ``"dice"`` or ``"hd95"`` per region (see ``lesion_wise_scores``)."""

    def __init__(
        self,
        score: Literal["dice", "hd95"] = "dice",
        dilation_iterations: int = 3,
        min_lesion_volume: float = 50.0,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__(empty_rule="brats", spacing=spacing)
        if score not in ("dice", "hd95"):
            raise ValueError(f"score must be 'dice' or 'hd95', got {score!r}")
        self.score = score
        self.dilation_iterations = dilation_iterations
        self.min_lesion_volume = min_lesion_volume

    def _score(self, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
        result = lesion_wise_scores(pred, ref, spacing, self.dilation_iterations, self.min_lesion_volume)
        return result[self.score]
