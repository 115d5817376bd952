"""BraTS 2023+ lesion-wise Dice and HD95, the scores the 2023 challenge ranks by (REFERENCE.md section 2).

Per region of a case: reference lesions are 26-connected components, merged when they fall into one blob of the
reference dilated ``dilation_iterations`` times (3 for glioma); each lesion is scored against the union of the
predicted components that touch its dilated mask; a lesion that none touches scores Dice 0 and HD ``FP_HD``;
each predicted component touching no lesion is a false positive scoring Dice 0 and HD ``FP_HD``. Lesions of
``min_lesion_voxels`` voxels or fewer (50, whatever the spacing: the challenge counts voxels) are not scored, and
predictions touching them are not false positives either.
Case score = sum / (scored lesions + false positives); with neither, Dice 1 and HD 0.

The per-lesion Dice and HD95 are MONAI's (``compute_dice``, ``compute_hausdorff_distance``). HD95 uses voxel
surfaces, where the challenge's code weights surface elements by area: values can differ by a fraction of a mm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, compute_dice, compute_hausdorff_distance
from scipy import ndimage

from common.handlers import RegionMetricHandler
from common.metrics import case_spacings

FP_HD = 374.0
"""HD95 of a missed lesion or a false-positive component in the 2023 rule (the legacy rule uses 373.13)."""


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


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(m[None, None], dtype=torch.float32) for m in (pred, ref))  # type: ignore[return-value]


def lesion_wise_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    dilation_iterations: int = 3,
    min_lesion_voxels: int = 50,
    percentile: float = 95.0,
    fp_hd: float = FP_HD,
) -> dict[str, float]:
    """Lesion-wise Dice and HD95 of one region of one case (binary masks), with the lesion and FP counts."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * pred.ndim))
    lesions, n_lesions = reference_lesions(ref, dilation_iterations)
    pred_cc, _ = _components(pred)
    touched: set[int] = set()
    dices, hds = [], []
    for k in range(1, n_lesions + 1):
        lesion = lesions == k
        hits = np.unique(pred_cc[_dilate(lesion, dilation_iterations)])
        hits = hits[hits != 0]
        touched.update(int(h) for h in hits)
        if int(lesion.sum()) <= min_lesion_voxels:
            continue
        if hits.size:
            p, r = _pair(np.isin(pred_cc, hits), lesion)
            dices.append(float(compute_dice(p, r, include_background=True)))
            hds.append(float(compute_hausdorff_distance(p, r, True, percentile=percentile, spacing=spacing)))
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


class LesionWiseMetric(CumulativeIterationMetric):
    """``"dice"`` or ``"hd95"`` per case and region (see ``lesion_wise_scores``); spacing from each affine."""

    def __init__(
        self, score: Literal["dice", "hd95"] = "dice", dilation_iterations: int = 3, min_lesion_voxels: int = 50
    ) -> None:
        super().__init__()
        if score not in ("dice", "hd95"):
            raise ValueError(f"score must be 'dice' or 'hd95', got {score!r}")
        self.score = score
        self.dilation_iterations = dilation_iterations
        self.min_lesion_voxels = min_lesion_voxels

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None or y_pred.shape != y.shape:
            got = None if y is None else tuple(y.shape)
            raise ValueError(f"prediction shape {tuple(y_pred.shape)} differs from reference shape {got}")
        pred, ref = y_pred.detach().cpu().numpy() > 0.5, y.detach().cpu().numpy() > 0.5
        spacings = case_spacings(y_pred, y)
        scores = [
            [
                lesion_wise_scores(
                    pred[b, c], ref[b, c], spacings[b], self.dilation_iterations, self.min_lesion_voxels
                )[self.score]
                for c in range(pred.shape[1])
            ]
            for b in range(pred.shape[0])
        ]
        return torch.tensor(scores, dtype=torch.float64)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("no cases were scored")
        return torch.nanmean(data, dim=0)


class LesionWise(RegionMetricHandler):
    """BraTS 2023 lesion-wise ``score`` (``"dice"`` or ``"hd95"``) per region, e.g. ``test_lesion_dice_ET``."""

    def __init__(
        self,
        region_names: Sequence[str],
        score: Literal["dice", "hd95"] = "dice",
        dilation_iterations: int = 3,
        min_lesion_voxels: int = 50,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric = LesionWiseMetric(score, dilation_iterations, min_lesion_voxels)
        super().__init__(metric, region_names, output_transform, save_details)
