"""BraTS root folder (as downloaded) -> datalist with a seeded train/validation/test split.

Layouts recognised (REFERENCE.md section 1), searched recursively under the root:
- 2018-2019: ``.../HGG|LGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``
- 2020: ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii.gz``
- 2021: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``
- 2023+: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``
The Medical Segmentation Decathlon Task01 (4D NIfTI in ``imagesTr``) is refused with a message.

Split: case ids sorted, shuffled with ``random.Random(seed)``, then cut into fractions
(default 70/15/15 % train/validation/test, at least one case in each part when there are >= 3 cases).
The same root and seed always give the same split; the split is written next to the run's outputs.

Folds (``fold_split``, nnU-Net style cross-validation by case, the rule of ``common.folds``): the test part above
stays fixed; the other cases (training + validation) are sorted by id, shuffled with ``random.Random(seed)`` and
cut into ``num_folds`` contiguous parts of near-equal size (the first ``n % num_folds`` parts one case larger).
Fold ``k`` validates on part ``k`` and trains on the others, so the validation parts are disjoint and together
cover every non-test case, and no fold ever sees a test case.

    python -m scripts.prepare --dataset_dir /data/BraTS2021 --output datalist.json
    python -m scripts.prepare --dataset_dir /data/BraTS2021 --output datalist.json --fold 2 --num_folds 5
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.files import write_json_atomic
from common.folds import check_fold, fold_of
from scripts.brats import GLI2023, LEGACY, BratsInputError, Convention, check_headers, check_stacked

logger = logging.getLogger(__name__)

NIFTI_EXT = (".nii.gz", ".nii")
SPLIT_KEYS = ("training", "validation", "testing")


def _split_name(name: str) -> tuple[str, str] | None:
    """(case prefix, suffix) of a BraTS file name such as ``BraTS2021_00000_t1ce.nii.gz``."""
    for ext in NIFTI_EXT:
        if name.endswith(ext):
            m = re.match(r"^(.*)[_-]([A-Za-z0-9]+)$", name[: -len(ext)])
            return (m.group(1), m.group(2).lower()) if m else None
    return None


def _family(suffixes: set[str]) -> Convention | None:
    if {"t1ce", "flair"} & suffixes:
        return LEGACY
    if {"t1c", "t1n", "t2w", "t2f"} & suffixes:
        return GLI2023
    return None


def edition_of(case_dir: Path, conv: Convention) -> str:
    """Edition string of a case folder, from its name and parents (only the label family matters for training)."""
    if conv is GLI2023:
        return "2023"
    parts = {p.upper() for p in case_dir.parts}
    if case_dir.name.startswith("BraTS2021_"):
        return "2021"
    if case_dir.name.startswith("BraTS20_"):
        return "2020"
    if {"HGG", "LGG"} & parts:
        return "2018-2019"
    return "2018-2021"


def find_case(case_dir: str | Path, require_label: bool = True) -> dict[str, Any]:
    """Datalist item of one case folder: {"case", "edition", "image": [T1c, T1, T2, FLAIR], "label"?}."""
    case_dir = Path(case_dir)
    files: dict[str, Path] = {}
    for f in sorted(case_dir.iterdir()):
        parsed = _split_name(f.name)
        if parsed and f.is_file():
            files.setdefault(parsed[1], f)
    conv = _family(set(files))
    if conv is None:
        raise BratsInputError(
            f"{case_dir}: no BraTS modality files (expected *_t1ce/_t1/_t2/_flair or *-t1c/-t1n/-t2w/-t2f .nii.gz)"
        )
    missing = [s for s in conv.suffixes if s not in files]
    if require_label and "seg" not in files:
        missing.append("seg")
    if missing:
        raise BratsInputError(f"{case_dir}: missing {', '.join(missing)} file(s) (BraTS {conv.name} naming)")
    item: dict[str, Any] = {
        "case": case_dir.name,
        "edition": edition_of(case_dir, conv),
        "image": [str(files[s]) for s in conv.suffixes],
    }
    if "seg" in files:
        item["label"] = str(files["seg"])
    return item


def files_item(files: Sequence[str | Path]) -> dict[str, Any]:
    """Datalist item from the 4 modality files of one case, recognised by their BraTS suffixes."""
    by_suffix: dict[str, Path] = {}
    for f in files:
        parsed = _split_name(Path(f).name)
        if parsed is None:
            raise BratsInputError(f"{f}: not a .nii/.nii.gz file with a BraTS modality suffix")
        by_suffix[parsed[1]] = Path(f)
    conv = _family(set(by_suffix))
    missing = (
        [s for s in conv.suffixes if s not in by_suffix] if conv else ["t1ce/t1c", "t1/t1n", "t2/t2w", "flair/t2f"]
    )
    if missing or conv is None:
        raise BratsInputError(f"{[str(f) for f in files]}: missing modality {', '.join(missing)}")
    first = by_suffix[conv.suffixes[0]]
    case = _split_name(first.name)[0]  # type: ignore[index]
    return {
        "case": case,
        "edition": edition_of(first.parent, conv),
        "image": [str(by_suffix[s]) for s in conv.suffixes],
    }


def find_cases(dataset_dir: str | Path, require_label: bool = True) -> list[dict[str, Any]]:
    """All cases under a BraTS root (recursive), sorted by case id; one edition family per root."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise BratsInputError(f"{root}: dataset folder not found")
    if (root / "imagesTr").is_dir() or (root / "dataset.json").is_file():
        raise BratsInputError(
            f"{root}: looks like the Medical Segmentation Decathlon Task01 layout (4D NIfTI, labels 1 edema, "
            "2 non-enhancing, 3 enhancing), which this bundle does not read; use a BraTS challenge release "
            "(2018-2021 or 2023 layout)"
        )
    case_dirs = sorted(
        {
            Path(dirpath)
            for dirpath, _, names in os.walk(root)
            for n in names
            if _family({(_split_name(n) or ("", ""))[1]})
        }
    )
    if not case_dirs:
        raise BratsInputError(f"{root}: no BraTS cases found (empty dataset folder or unknown layout)")
    items = [find_case(d, require_label) for d in case_dirs]
    families = {LEGACY.name if i["edition"] != "2023" else "2023" for i in items}
    if len(families) > 1:
        raise BratsInputError(f"{root}: mixes 2018-2021 and 2023 editions; prepare one edition per root")
    ids = [i["case"] for i in items]
    if len(set(ids)) != len(ids):
        raise BratsInputError(f"{root}: duplicate case ids {sorted({c for c in ids if ids.count(c) > 1})}")
    return items


def split_cases(
    items: list[dict[str, Any]], seed: int = 12345, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> dict[str, list[dict[str, Any]]]:
    """Seeded split by case id (documented in the module docstring)."""
    items = sorted(items, key=lambda i: i["case"])
    random.Random(seed).shuffle(items)
    n = len(items)
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_train = n - n_val - n_test
    return {
        "training": items[:n_train],
        "validation": items[n_train : n_train + n_val],
        "testing": items[n_train + n_val :],
    }


def prepare(
    dataset_dir: str | Path,
    output: str | Path | None = None,
    seed: int = 12345,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    check: bool = True,
) -> dict[str, Any]:
    """Build (and optionally write, atomically) the datalist of a BraTS root.

    ``check`` reads every header and refuses cases whose files differ in shape or affine.
    """
    items = find_cases(dataset_dir)
    if check:
        for item in items:
            check_headers(item["image"] + [item["label"]])
    datalist: dict[str, Any] = {
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "edition": items[0]["edition"],
        "seed": seed,
        "fractions": list(fractions),
        **split_cases(items, seed, fractions),
    }
    if output is not None:
        write_json_atomic(datalist, output, indent=2)
    return datalist


def fold_split(datalist: dict[str, Any], fold: int, num_folds: int, seed: int = 12345) -> dict[str, Any]:
    """The datalist of cross-validation fold ``fold`` of ``num_folds`` (``common.folds``, rule in the module docstring).

    ``testing`` is the datalist's own test part, unchanged; ``training`` and ``validation`` are re-cut from the
    datalist's non-test cases. Raises ``ValueError`` for a fold outside ``0 .. num_folds - 1`` or fewer non-test
    cases than folds.
    """
    check_fold(fold, num_folds)
    by_case = {i["case"]: i for i in datalist["training"] + datalist["validation"]}
    folds = fold_of(by_case, num_folds, seed, what="non-test cases")  # in the rule's shuffled order
    return {
        **{k: v for k, v in datalist.items() if k not in SPLIT_KEYS},
        "fold": fold,
        "num_folds": num_folds,
        "training": [by_case[c] for c, k in folds.items() if k != fold],
        "validation": [by_case[c] for c, k in folds.items() if k == fold],
        "testing": list(datalist["testing"]),
    }


def load_split(
    dataset_dir: str | Path,
    key: str,
    output: str | Path | None = None,
    seed: int = 12345,
    fold: int | None = None,
    num_folds: int = 5,
) -> list[dict[str, Any]]:
    """One part of the split (``training``/``validation``/``testing``), used from the configs.

    ``fold=None`` is the single seeded split; ``fold=k`` the cross-validation fold ``k`` of ``num_folds``
    (``fold_split``; its ``testing`` is the single split's). ``output`` receives the datalist that is used.
    """
    if key not in SPLIT_KEYS:
        raise ValueError(f"split key must be one of {SPLIT_KEYS}, got {key!r}")
    if fold is None:
        datalist = prepare(dataset_dir, output=output, seed=seed)
    else:
        datalist = fold_split(prepare(dataset_dir, seed=seed), fold, num_folds, seed)
        if output is not None:
            write_json_atomic(datalist, output, indent=2)
    parts = datalist[key]
    if not parts:
        raise BratsInputError(f"{dataset_dir}: the {key} split is empty (too few cases)")
    counts = ", ".join(f"{k} {len(datalist[k])}" for k in SPLIT_KEYS)
    where = "" if fold is None else f" (fold {fold} of {num_folds})"
    logger.info("BraTS %s at %s: %s cases%s; using %s", datalist["edition"], dataset_dir, counts, where, key)
    return parts


def inference_items(dataset_dir: str | Path, files: Sequence[str | Path] | None = None) -> list[dict[str, Any]]:
    """Items to segment: the 4 given ``files`` (or 1 four-channel file), else a case folder, else every case.

    A single 4D file (x, y, z, 4 in the order T1c, T1, T2, FLAIR) carries no edition: its label values are
    the inference config's ``default_edition``.
    """
    single = files[0] if files and len(files) == 1 else (dataset_dir if Path(dataset_dir).is_file() else None)
    if single is not None:
        check_stacked(single)
        return [{"case": Path(single).name.split(".")[0], "image": str(single)}]
    if files:
        item = files_item(files)
        check_headers(item["image"])
        return [item]
    path = Path(dataset_dir)
    if path.is_dir() and any(_split_name(f.name) for f in path.iterdir() if f.is_file()):
        items = [find_case(path, require_label=False)]
    else:
        items = find_cases(path, require_label=False)
    for item in items:
        item.pop("label", None)
        check_headers(item["image"])
    return items


def main(
    dataset_dir: str, output: str = "datalist.json", seed: int = 12345, fold: int | None = None, num_folds: int = 5
) -> None:
    if fold is None:
        datalist = prepare(dataset_dir, output, seed)
    else:
        datalist = fold_split(prepare(dataset_dir, seed=seed), fold, num_folds, seed)
        write_json_atomic(datalist, output, indent=2)
    counts = {k: len(datalist[k]) for k in SPLIT_KEYS}
    where = "" if fold is None else f", fold {fold} of {num_folds}"
    print(f"BraTS {datalist['edition']} at {dataset_dir}: {counts} (seed {seed}{where}) -> {output}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
