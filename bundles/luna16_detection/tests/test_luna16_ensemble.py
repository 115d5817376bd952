"""luna16_detection: folds over the official subsets (``--fold k``).

Tiny synthetic scans in the real layout, CPU, fp32 (``use_amp`` off).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from scripts.prepare import LunaDataError, fold_subsets
from scripts.synthetic import generate

BUNDLE = Path(__file__).resolve().parents[1]
FP32 = {"use_amp": False, "num_workers": 0}


def _configs(*names: str) -> list[str]:
    return [str(BUNDLE / "configs" / n) for n in names]


def _workflow(names: tuple[str, ...], workflow_type: str, run_id: str, **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=_configs(*names),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        **override,
    )
    wf.initialize()
    return wf


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 scans, 2 per subset (subset0 holds one scan with nodules and excluded findings, one without nodules)."""
    return generate(tmp_path_factory.mktemp("luna_ens"), n_scans=20, size=(40, 40, 20), empty_fraction=0.3, seed=14)


# ---------------------------------------------------------------- folds over the official subsets


@pytest.mark.parametrize(
    "fold, training, validation",
    [(0, [2, 3, 4, 5, 6, 7, 8, 9], [1]), (3, [0, 1, 2, 5, 6, 7, 8, 9], [4]), (9, [1, 2, 3, 4, 5, 6, 7, 8], [0])],
)
def test_fold_k_tests_on_subset_k_and_validates_on_the_next(fold: int, training: list[int], validation: list[int]):
    assert fold_subsets(fold) == {"training": training, "validation": validation, "test": [fold]}


def test_the_ten_folds_partition_the_subsets() -> None:
    tests, validations = [], []
    for k in range(10):
        parts = fold_subsets(k)
        train, val, test = (set(parts[p]) for p in ("training", "validation", "test"))
        assert not (train & val or train & test or val & test)  # no subset in two roles
        assert train | val | test == set(range(10)) and len(train) == 8
        tests += parts["test"]
        validations += parts["validation"]
    assert sorted(tests) == sorted(validations) == list(range(10))  # each subset tested once, validated once
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="fold must be 0..9"):
            fold_subsets(bad)


def _subsets(items: list[dict]) -> list[int]:
    return sorted({i["subset"] for i in items})


def test_fold_override_in_train_json(data: Path, tmp_path: Path) -> None:
    """``--fold 3``: subset 3 is the test subset of evaluate.json, subset 4 selects the model, the other 8 train;
    checkpoints go to models/fold3/, outputs to eval/fold3/. Without --fold: official fold 0's split in models/ and
    eval/, as before folds existed."""
    wf = _workflow(("train.json", "evaluate.json"), "train", "evaluating", dataset_dir=str(data),
                   bundle_root=str(tmp_path), fold=3, **FP32)  # fmt: skip
    parsed = wf.parser.get_parsed_content
    assert parsed("ckpt_dir") == f"{tmp_path}/models/fold3" and parsed("output_dir") == f"{tmp_path}/eval/fold3"
    assert parsed("ckpt_path") == f"{tmp_path}/models/fold3/model.pt"
    assert _subsets(parsed("train#dataset#data")) == [0, 1, 2, 5, 6, 7, 8, 9]
    assert _subsets(parsed("datalist")["validation"]) == [4]
    assert _subsets(parsed("validate#dataset#data")) == [3]  # evaluate.json: the fold's test subset
    assert parsed("validate#key_metric#test_cpm").output_dir == f"{tmp_path}/eval/fold3"

    default = _workflow(("train.json",), "train", "training", dataset_dir=str(data), bundle_root=str(tmp_path / "d"),
                        **FP32)  # fmt: skip
    parsed = default.parser.get_parsed_content
    assert parsed("ckpt_dir") == f"{tmp_path}/d/models" and parsed("output_dir") == f"{tmp_path}/d/eval"
    assert _subsets(parsed("train#dataset#data")) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert _subsets(parsed("validate#dataset#data")) == [1]


def test_fold_with_a_missing_subset_names_it(data: Path, tmp_path: Path) -> None:
    """A partial download: fold 3 validates on subset4; without it, --fold 3 stops naming fold 3 and subset4."""
    import shutil

    root = tmp_path / "LUNA16"
    shutil.copytree(data, root)
    shutil.rmtree(root / "subset4")
    wf = _workflow(("train.json",), "train", "training", dataset_dir=str(root), bundle_root=str(tmp_path), fold=3,
                   **FP32)  # fmt: skip
    with pytest.raises(Exception) as e:
        wf.parser.get_parsed_content("train#dataset#data")
    cause = e.value
    while cause is not None and not isinstance(cause, LunaDataError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None, e.value
    assert str(cause).startswith(f"{root}: fold 3 cannot train: it trains on subset0..subset2, subset5..subset9")
    assert "validates on subset4, but subset4 is missing" in str(cause)
    # fold 4 (test subset4, the missing one) still trains
    ok = _workflow(("train.json",), "train", "training", dataset_dir=str(root), bundle_root=str(tmp_path), fold=4,
                   **FP32)  # fmt: skip
    assert _subsets(ok.parser.get_parsed_content("train#dataset#data")) == [0, 1, 2, 3, 6, 7, 8, 9]
