"""Cross-validation folds: one seeded rule for every bundle that cuts its own data into folds (nnU-Net style).

Rule: the keys (BraTS case ids, CXR14 patient ids) are made unique and sorted, shuffled with
``random.Random(seed)`` and cut into ``num_folds`` contiguous parts of near-equal size (the first
``n % num_folds`` parts one key larger). Fold ``k`` validates on part ``k`` and trains on the others, so the
validation parts are disjoint and together hold every key once. What the keys are drawn from (never a test set)
is the bundle's decision; the same keys and seed always give the same folds, whatever order the keys come in.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable


def check_fold(fold: object, num_folds: object) -> None:
    """Raise ``ValueError`` unless both are integers with ``num_folds >= 2`` and ``0 <= fold < num_folds``."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (fold, num_folds)):
        raise ValueError(f"fold and num_folds must be integers, got fold={fold!r}, num_folds={num_folds!r}")
    if num_folds < 2 or not 0 <= fold < num_folds:  # type: ignore[operator]
        raise ValueError(f"fold must be in 0..num_folds-1 with num_folds >= 2, got fold={fold}, num_folds={num_folds}")


def fold_of(keys: Iterable[Hashable], num_folds: int, seed: int, what: str = "keys") -> dict[Hashable, int]:
    """The fold that validates each key (rule in the module docstring).

    ``what`` names the keys in the error raised when there are fewer of them than folds.
    """
    check_fold(0, num_folds)
    pool = sorted(set(keys))  # type: ignore[type-var]
    if len(pool) < num_folds:
        raise ValueError(f"{len(pool)} {what} cannot make {num_folds} folds (each fold needs one)")
    random.Random(seed).shuffle(pool)
    size, extra = divmod(len(pool), num_folds)
    folds: dict[Hashable, int] = {}
    start = 0
    for k in range(num_folds):
        stop = start + size + (1 if k < extra else 0)
        folds.update((key, k) for key in pool[start:stop])
        start = stop
    return folds


def validation_keys(
    keys: Iterable[Hashable], fold: int, num_folds: int, seed: int, what: str = "keys"
) -> list[Hashable]:
    """The keys fold ``fold`` of ``num_folds`` validates on, in the shuffled order of the rule."""
    check_fold(fold, num_folds)
    return [key for key, k in fold_of(keys, num_folds, seed, what).items() if k == fold]
