"""Per-region Dice, IoU and Hausdorff distance on MONAI's own metric classes, with the empty-mask rule named.

MONAI computes the values (``DiceMetric``, ``MeanIoU``, ``HausdorffDistanceMetric``); added here is only what the
official scoring rules need (REFERENCE.md section 2):

- an explicit empty-mask rule:

  - ``"brats"``, the legacy BraTS 2017-2021 rule: both masks empty scores Dice 1, IoU 1, HD 0; exactly one empty
    scores Dice 0, IoU 0, HD ``BRATS_EMPTY_HD`` (373.13 mm, the diagonal of a 240x240x155 mm volume);
  - ``"nan"``: a case without reference is excluded (NaN for every metric); a prediction that misses a non-empty
    reference scores Dice/IoU 0 and HD NaN (undefined, so excluded from the mean).

  For Dice and IoU these are exactly MONAI's ``ignore_empty=False`` / ``True``. For Hausdorff distances MONAI
  returns NaN or inf as soon as a mask is empty, so those cases are rewritten after MONAI's computation;
- distances in millimetres with the spacing of each case, read from its own affine (a batch may mix spacings).

``reduction="mean_batch"`` everywhere: ``aggregate()`` gives one value per region (NaN-aware mean over cases) and
``get_buffer()`` the (cases, regions) table that ``MetricsSaver`` writes per case.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

EmptyRule = Literal["brats", "nan"]
EMPTY_RULES = ("brats", "nan")
BRATS_EMPTY_HD = 373.13


def check_rule(rule: str) -> EmptyRule:
    if rule not in EMPTY_RULES:
        raise ValueError(f"empty_rule must be one of {EMPTY_RULES}, got {rule!r}")
    return rule  # type: ignore[return-value]


def region_dice(empty_rule: EmptyRule = "brats") -> DiceMetric:
    """Dice per case and region (binary, channel-first masks)."""
    return DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=check_rule(empty_rule) == "nan")


def region_iou(empty_rule: EmptyRule = "brats") -> MeanIoU:
    """IoU (Jaccard index) per case and region."""
    return MeanIoU(include_background=True, reduction="mean_batch", ignore_empty=check_rule(empty_rule) == "nan")


def spacings_of(image: torch.Tensor) -> list[tuple[float, ...]]:
    """Voxel spacing (mm) of each case of a (B, C, spatial...) batch from its affine (column norms); 1 mm when
    the tensor carries no affine.

    MONAI's collate (``DataLoader``, ``list_data_collate``) gives a batch one affine per case, (B, 4, 4). A single
    (4, 4) affine is taken as shared by every case: nothing tells it from the first case's affine that
    ``torch.stack``/``torch.cat`` of MetaTensors keep (MONAI copies the first input's metadata), so cases of
    different spacings must be batched by MONAI's collate or passed as a list of channel-first tensors.
    """
    spatial_dims, batch = image.ndim - 2, image.shape[0]
    affine = getattr(image, "affine", None)
    if affine is None:
        return [(1.0,) * spatial_dims] * batch
    affine = torch.as_tensor(affine, dtype=torch.float64)
    affines = affine.expand(batch, *affine.shape[-2:]) if affine.ndim == 2 else affine
    if affines.shape[0] != batch:
        raise ValueError(f"{affines.shape[0]} affines for a batch of {batch} cases")
    norms = torch.linalg.norm(affines[:, :spatial_dims, :spatial_dims], dim=1)
    return [tuple(float(v) for v in row) for row in norms]


def case_spacings(y_pred: torch.Tensor, y: torch.Tensor) -> list[tuple[float, ...]]:
    """The spacing of each case for distances between ``y_pred`` and ``y``: the prediction's affine, else the
    reference's (a prediction made from a bare array lies on the reference's grid); when both carry affines that
    disagree on a case's spacing the pair is refused rather than scored in one of them."""
    if getattr(y_pred, "affine", None) is None:
        return spacings_of(y)
    spacings = spacings_of(y_pred)
    if getattr(y, "affine", None) is not None:
        for case, (ours, theirs) in enumerate(zip(spacings, spacings_of(y))):
            if not all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(ours, theirs)):
                raise ValueError(
                    f"case {case} of the batch: prediction spacing {ours} mm differs from reference spacing {theirs} mm"
                )
    return spacings


class RegionHausdorffMetric(HausdorffDistanceMetric):
    """Symmetric Hausdorff distance (mm) per case and region; ``percentile=95`` is HD95, ``None`` the maximum.

    ``spacing`` fixes the voxel size for every case; by default each case's own affine gives it (``case_spacings``).
    """

    def __init__(
        self, percentile: float | None = 95.0, empty_rule: EmptyRule = "brats", spacing: Sequence[float] | None = None
    ) -> None:
        super().__init__(include_background=True, percentile=percentile, reduction="mean_batch")
        self.empty_rule = check_rule(empty_rule)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y_pred.shape != y.shape:
            raise ValueError(f"prediction shape {tuple(y_pred.shape)} differs from reference shape {tuple(y.shape)}")
        spacing = [self.spacing] * y_pred.shape[0] if self.spacing else case_spacings(y_pred, y)
        with warnings.catch_warnings():  # MONAI warns about every empty mask; the rule below decides those cases
            warnings.simplefilter("ignore", UserWarning)
            hd = super()._compute_tensor(y_pred, y, spacing=spacing).double()
        pred_any = (y_pred > 0.5).flatten(2).any(-1).to(hd.device)
        ref_any = (y > 0.5).flatten(2).any(-1).to(hd.device)
        if self.empty_rule == "brats":
            hd[~pred_any & ~ref_any] = 0.0
            hd[pred_any ^ ref_any] = BRATS_EMPTY_HD
        else:
            hd[~pred_any | ~ref_any] = float("nan")
        return hd
