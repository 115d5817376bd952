"""common.folds: the one cross-validation rule (sorted keys, seeded shuffle, contiguous near-equal parts)."""

from __future__ import annotations

import random

import pytest

from common.folds import check_fold, fold_of, validation_keys


@pytest.mark.parametrize("n, num_folds", [(10, 5), (11, 3), (2, 2), (23, 4)])
def test_fold_of_is_the_seeded_shuffle_cut_into_contiguous_parts(n: int, num_folds: int) -> None:
    keys = [f"p{i:03d}" for i in range(n)]
    # the rule written out: shuffle the sorted keys, then parts of sizes ceil/floor in fold order
    order = sorted(keys)
    random.Random(42).shuffle(order)
    sizes = [n // num_folds + (1 if k < n % num_folds else 0) for k in range(num_folds)]
    expected, start = {}, 0
    for k, size in enumerate(sizes):
        expected.update({key: k for key in order[start : start + size]})
        start += size
    got = fold_of(reversed(keys), num_folds, seed=42)  # input order does not matter
    assert got == expected
    assert list(got) == order  # the shuffled order is kept
    for k in range(num_folds):
        assert validation_keys(keys, k, num_folds, seed=42) == [key for key in order if expected[key] == k]


def test_duplicates_count_once_and_seed_changes_the_folds() -> None:
    keys = [f"p{i}" for i in range(30)]
    assert fold_of(keys + keys[:5], 3, seed=1) == fold_of(keys, 3, seed=1)
    assert fold_of(keys, 3, seed=1) != fold_of(keys, 3, seed=2)


@pytest.mark.parametrize("fold, num_folds", [(3, 3), (-1, 3), (0, 1), (1.0, 3), (True, 3), (0, "3")])
def test_bad_fold_numbers_are_refused(fold, num_folds) -> None:
    with pytest.raises(ValueError, match="fold"):
        check_fold(fold, num_folds)
    with pytest.raises(ValueError, match="fold"):
        validation_keys(["a", "b", "c", "d"], fold, num_folds, seed=0)


def test_fewer_keys_than_folds_names_the_keys() -> None:
    with pytest.raises(ValueError, match="2 train/val patients cannot make 3 folds"):
        fold_of(["a", "b", "a"], 3, seed=0, what="train/val patients")
