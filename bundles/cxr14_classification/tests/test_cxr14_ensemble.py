"""cxr14_classification: patient-level cross-validation folds.

A tiny generated set in the real NIH layout (64 px), CPU, fp32 (``use_amp`` off).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from scripts.prepare import out_of_fold, prepare_datalist
from scripts.synthetic import generate

BUNDLE = Path(__file__).resolve().parents[1]
TINY = {"image_size": 64, "num_workers": 0, "batch_size": 8, "max_epochs": 1, "use_amp": False}
INFER = {"image_size": 64, "num_workers": 0, "batch_size": 8, "use_amp": False}


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


def _run(names: tuple[str, ...], workflow_type: str, run_id: str, **override) -> ConfigWorkflow:
    wf = _workflow(names, workflow_type, run_id, **override)
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("cxr14_folds") / "data", n_patients=40, size=64, seed=7, n_dicom=0)


def _official(data: Path) -> tuple[dict[str, str], set[str], set[str]]:
    """image name -> patient (read from Data_Entry_2017.csv here, not through prepare), train_val and test names."""
    with open(data / "Data_Entry_2017.csv", newline="") as f:
        patient = {row["Image Index"]: row["Patient ID"] for row in csv.DictReader(f)}
    lists = [set((data / f).read_text().split()) for f in ("train_val_list.txt", "test_list.txt")]
    return patient, lists[0], lists[1]


def _names(items: list[dict]) -> list[str]:
    return [Path(i["image"]).name for i in items]


# ---------------------------------------------------------------- folds


@pytest.mark.parametrize("num_folds", [2, 3, 5])
def test_folds_are_patient_level_cover_train_val_once_and_never_hold_a_test_image(data: Path, num_folds: int) -> None:
    patient, train_val, test = _official(data)
    train_val_patients = {patient[n] for n in train_val}
    validated: list[str] = []
    for k in range(num_folds):
        fold = prepare_datalist(data, fold=k, num_folds=num_folds)
        train, val = (_names(fold[p]) for p in ("training", "validation"))
        assert sorted(_names(fold["test"])) == sorted(test)  # the official test list, unchanged
        assert not (set(train) | set(val)) & test  # no test-list image in any fold
        assert sorted(train + val) == sorted(train_val)  # every train_val image on exactly one side
        train_p, val_p = {patient[n] for n in train}, {patient[n] for n in val}
        assert not train_p & val_p  # all images of a patient on one side
        assert abs(len(val_p) - len(train_val_patients) / num_folds) < 1  # near-equal patient counts
        assert fold["source"]["fold"] == k and fold["source"]["num_folds"] == num_folds
        validated += sorted(val_p)
    assert sorted(validated) == sorted(train_val_patients)  # each train_val patient validated exactly once


def test_folds_are_deterministic_seeded_and_out_of_fold_tags_match(data: Path) -> None:
    def val_patients(seed: int) -> list[list[str]]:
        return [sorted({i["patient"] for i in prepare_datalist(data, seed=seed, fold=k, num_folds=3)["validation"]})
                for k in range(3)]  # fmt: skip

    assert val_patients(3) == val_patients(3)
    assert val_patients(3) != val_patients(4)
    tagged = out_of_fold(prepare_datalist(data, seed=3), num_folds=3, seed=3)
    assert len(tagged) == len(_official(data)[1])
    for k, patients in enumerate(val_patients(3)):
        assert sorted({i["patient"] for i in tagged if i["fold"] == k}) == patients


@pytest.mark.parametrize("fold, num_folds", [(3, 3), (-1, 3), (0, 1), (1.0, 3), (True, 3), ("1", 3)])
def test_bad_fold_numbers_are_refused(data: Path, fold, num_folds) -> None:
    with pytest.raises(ValueError, match="fold"):
        prepare_datalist(data, fold=fold, num_folds=num_folds)


def test_more_folds_than_patients_names_the_dataset(data: Path) -> None:
    n = len({p for n, p in _official(data)[0].items() if n in _official(data)[1]})
    with pytest.raises(ValueError, match=rf"{n} train/val patients in {data} cannot make {n + 1} folds"):
        prepare_datalist(data, fold=0, num_folds=n + 1)


def test_fold_override_in_train_json(data: Path, tmp_path: Path) -> None:
    """``--fold 1 --num_folds 3``: that fold's datalist (written to data/fold1/), checkpoints to models/fold1/,
    outputs to eval/fold1/; evaluate.json loads models/fold1/model.pt and scores the official test list. Without
    ``--fold`` nothing changes: the val_fraction split, data/datalist.json, models/, eval/."""
    wf = _workflow(("train.json", "evaluate.json"), "train", "evaluating", dataset_dir=str(data),
                   bundle_root=str(tmp_path), fold=1, num_folds=3, **TINY)  # fmt: skip
    parsed = wf.parser.get_parsed_content
    expected = prepare_datalist(data, fold=1, num_folds=3)
    assert (
        parsed("ckpt_dir") == f"{tmp_path}/models/fold1" and parsed("ckpt_path") == f"{tmp_path}/models/fold1/model.pt"
    )
    assert parsed("output_dir") == f"{tmp_path}/eval/fold1"
    assert parsed("train#dataset#data") == expected["training"]
    assert parsed("validate#dataset#data") == expected["validation"]
    assert parsed("test#dataset#data") == expected["test"]
    assert json.loads((tmp_path / "data" / "fold1" / "datalist.json").read_text()) == expected

    default = _workflow(("train.json",), "train", "training", dataset_dir=str(data), bundle_root=str(tmp_path / "d"),
                        **TINY)  # fmt: skip
    single = prepare_datalist(data)
    assert default.parser.get_parsed_content("ckpt_dir") == f"{tmp_path}/d/models"
    assert default.parser.get_parsed_content("output_dir") == f"{tmp_path}/d/eval"
    assert default.parser.get_parsed_content("validate#dataset#data") == single["validation"]
    assert json.loads((tmp_path / "d" / "data" / "datalist.json").read_text()) == single
    assert "fold" not in single["source"] and single["source"]["val_fraction"] == 0.1
