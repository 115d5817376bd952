"""Brute-force oracles shared by the metric tests (tests/test_metrics.py, tests/test_metrics_rules.py and the BraTS
bundle's tests/test_lesion_wise_rules.py): plain NumPy/SciPy, nothing from MONAI or from the code under test.

Imported as ``tests.oracles`` (the repository root is on ``sys.path`` through ``conftest.py``; ``tools/mutation.py``
stages this file next to the tests it copies).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist


def surface_points(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Surface voxels (a face neighbour outside the mask, zero padding) by explicit shifts, in mm."""
    padded = np.pad(mask, 1)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    on_surface = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            neighbour = np.roll(padded, shift, axis=axis)[inner]
            on_surface |= mask & ~neighbour
    return np.argwhere(on_surface) * np.asarray(spacing)


def brute_hausdorff(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], percentile: float | None) -> float:
    """Symmetric Hausdorff distance (mm) between two non-empty masks from all pairwise surface-point distances:
    the larger of the two directed ``percentile``s (``None``: the maximum)."""
    d = cdist(surface_points(a, spacing), surface_points(b, spacing))
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    if percentile is None:
        return float(max(d_ab.max(), d_ba.max()))
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))
