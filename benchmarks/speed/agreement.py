"""Agreement metrics between our outputs and the reference's (no bundle imports: unit-testable alone).

- BraTS: Dice per region between two label maps (2018-2021 values: TC = {1, 4}, WT = {1, 2, 4}, ET = {4}).
- LUNA16: one-to-one matching of two detection lists produced at the same operating point.
- CXR14: mean AUROC over the labels that have both classes (MONAI's ``compute_roc_auc``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc

BRATS_REGIONS = {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}


def region_dice(a: Any, b: Any) -> dict[str, float]:
    """Dice per BraTS region between label maps ``a`` and ``b``; 1.0 when the region is empty in both."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    out = {}
    for region, values in BRATS_REGIONS.items():
        ma, mb = np.isin(a, values), np.isin(b, values)
        total = int(ma.sum() + mb.sum())
        out[region] = 1.0 if total == 0 else round(float(2 * (ma & mb).sum() / total), 5)
    return out


def match_detections(ref: dict[str, Any], ours: dict[str, Any], dist_mm: float = 1.0, score_tol: float = 0.01) -> dict:
    """Greedy one-to-one matching, highest reference score first: a pair matches when the box centres are within
    ``dist_mm`` and the scores within ``score_tol``; ``ref``/``ours``: {"boxes": [[x, y, z, w, h, d]], "scores"}."""
    rb, rs = np.asarray(ref["boxes"], float).reshape(-1, 6), np.asarray(ref["scores"], float).reshape(-1)
    ob, os_ = np.asarray(ours["boxes"], float).reshape(-1, 6), np.asarray(ours["scores"], float).reshape(-1)
    used = np.zeros(len(ob), bool)
    matched = 0
    for i in np.argsort(-rs, kind="stable"):
        if len(ob) == 0:
            break
        d = np.linalg.norm(ob[:, :3] - rb[i, :3], axis=1)
        ok = (d <= dist_mm) & (np.abs(os_ - rs[i]) <= score_tol) & ~used
        if ok.any():
            used[int(np.argmin(np.where(ok, d, np.inf)))] = True
            matched += 1
    return {
        "n_reference": int(len(rs)),
        "n_ours": int(len(os_)),
        "matched": matched,
        "fraction_of_reference_matched": round(matched / len(rs), 4) if len(rs) else 1.0,
        "top10_scores_reference": np.sort(rs)[::-1][:10].round(4).tolist(),
        "top10_scores_ours": np.sort(os_)[::-1][:10].round(4).tolist(),
    }


def mean_auroc(probs: dict[str, list[float]], labels: dict[str, list[float]]) -> float:
    """Mean AUROC over the labels scorable on these images (both classes present); images matched by name."""
    names = sorted(probs)
    p = np.array([probs[n] for n in names], float)
    y = np.array([labels[n] for n in names], float)
    per = [
        float(compute_roc_auc(torch.as_tensor(p[:, k]), torch.as_tensor(y[:, k])))
        if 0 < y[:, k].sum() < len(y)
        else np.nan
        for k in range(p.shape[1])
    ]
    return float(np.nanmean(per))
