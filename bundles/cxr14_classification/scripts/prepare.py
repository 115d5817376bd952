"""Turn an NIH ChestX-ray14 folder (as released) into the bundle's datalist JSON.

Accepted layout under ``dataset_dir``:
    images/*.png  or  images_001/images/*.png ... images_012/images/*.png  (any ``images*/`` folder, recursively)
    Data_Entry_2017.csv or Data_Entry_2017_v2020.csv (columns found BY NAME: Image Index, Finding Labels,
        Patient ID, View Position)
    train_val_list.txt, test_list.txt (the official patient-disjoint split, image names one per line)
Output: {"labels": [...14...], "training": [...], "validation": [...], "test": [...]} where each item is
``{"image": abs path, "label": [0/1 x 14], "patient": id, "view": "PA"|"AP"}``. The test set is exactly the
official ``test_list.txt``; validation is a seeded random fraction of the train_val PATIENTS (never images).

Folds (``fold=k``, ``num_folds=K``; cross-validation by patient, the rule of ``common.folds``): the patients of the
train_val images (after the view filter and ``skip_bad``) are sorted, shuffled with ``random.Random(seed)`` and cut
into ``K`` contiguous parts of near-equal patient count (the first ``n % K`` parts one patient larger). Fold ``k``
validates on the images of part ``k``'s patients and trains on all other train_val images, so every patient is in
one fold's validation only, all images of a patient are on one side, and the test list is never in a fold
(``val_fraction`` is not used then). ``out_of_fold`` tags each train_val image with the fold that validates it.

CLI: python -m scripts.prepare --dataset_dir /data/CXR14 --output data/datalist.json [--view PA] [--skip_bad]
     python -m scripts.prepare --dataset_dir /data/CXR14 --output data/fold2/datalist.json --fold 2 --num_folds 5
"""

from __future__ import annotations

import csv
import logging
import os
import random
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from common.files import write_json_atomic
from common.folds import fold_of, validation_keys

from .labels import LABELS, UnknownLabelError, multi_hot, parse_findings

logger = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
VIEW_COLUMN = "View Position"


class DatasetLayoutError(ValueError):
    """The dataset folder does not match the CXR14 layout; the message says which file and what is wrong."""


def find_entry_csv(dataset_dir: Path) -> Path:
    """``Data_Entry_2017*.csv``; the v2020 revision is preferred when both exist (it fixes some labels)."""
    candidates = sorted(dataset_dir.glob("Data_Entry_2017*.csv"))
    if not candidates:
        raise DatasetLayoutError(f"{dataset_dir}: no Data_Entry_2017*.csv found")
    return candidates[-1]


def read_entries(csv_path: Path) -> list[dict[str, str]]:
    """Rows of the entry CSV keyed by stripped column name (extra/odd columns like the trailing comma ignored)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DatasetLayoutError(f"{csv_path}: empty CSV file") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetLayoutError(f"{csv_path}: missing column(s) {missing}; header is {header}")
        index = {name: header.index(name) for name in (*REQUIRED_COLUMNS, VIEW_COLUMN) if name in header}
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(index.values()):
                raise DatasetLayoutError(f"{csv_path}: line {line_no} has {len(row)} fields, too few")
            rows.append({name: row[i].strip() for name, i in index.items()} | {"_line": str(line_no)})
    return rows


def read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: split list not found (the official CXR14 split is required)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def index_images(dataset_dir: Path) -> dict[str, Path]:
    """Image name -> path over every ``images*/`` folder (flat or images_00N/images/)."""
    found: dict[str, Path] = {}
    for folder in sorted(p for p in dataset_dir.glob("images*") if p.is_dir()):
        for path in folder.rglob("*"):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm") and path.is_file():
                if path.name in found:
                    logger.warning("duplicate image %s (using %s)", path, found[path.name])
                    continue
                found[path.name] = path
    if not found:
        raise DatasetLayoutError(f"{dataset_dir}: no images in any images*/ folder")
    return found


def split_patients(patients: list[str], val_fraction: float, seed: int) -> set[str]:
    """Seeded choice of validation patients (at least one when val_fraction > 0)."""
    unique = sorted(set(patients))
    rng = random.Random(seed)
    rng.shuffle(unique)
    n_val = max(1, round(len(unique) * val_fraction)) if val_fraction > 0 else 0
    return set(unique[:n_val])


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    view: str | None = None,
    skip_bad: bool = False,
    fold: int | None = None,
    num_folds: int = 5,
) -> dict[str, Any]:
    """Build (and optionally write atomically) the datalist; see the module docstring.

    Args:
        view: keep only this View Position ("PA" or "AP"); None keeps all.
        skip_bad: drop CSV rows whose image is missing or whose labels are unknown, with a warning,
            instead of stopping with an error that names them.
        fold: ``None``: validation is a ``val_fraction`` of the train_val patients; ``k``: validation is fold ``k``
            of ``num_folds`` patient folds (module docstring). A bad fold number raises ``ValueError``.
    """
    root = Path(dataset_dir).expanduser().resolve()
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset_dir not found")
    csv_path = find_entry_csv(root)
    entries = read_entries(csv_path)
    images = index_images(root)
    test_names = set(read_list(root / "test_list.txt"))
    train_val_names = set(read_list(root / "train_val_list.txt"))
    overlap = test_names & train_val_names
    if overlap:
        raise DatasetLayoutError(f"{root}: {len(overlap)} images in both split lists, e.g. {sorted(overlap)[:3]}")
    if view is not None and view.upper() not in ("PA", "AP"):
        raise ValueError(f"view must be 'PA', 'AP' or None, got {view!r}")

    items: dict[str, list[dict[str, Any]]] = {"train_val": [], "test": []}
    problems: list[str] = []
    not_listed = 0
    for row in entries:
        name = row["Image Index"]
        where = f"{csv_path.name} line {row['_line']} ({name})"
        if view is not None and row.get(VIEW_COLUMN, "").upper() != view.upper():
            continue
        part = "test" if name in test_names else "train_val" if name in train_val_names else None
        if part is None:
            not_listed += 1
            continue
        if name not in images:
            problems.append(f"{where}: image file not found under {root}/images*/")
            continue
        try:
            label = multi_hot(parse_findings(row["Finding Labels"], where))
        except UnknownLabelError as e:
            problems.append(str(e))
            continue
        items[part].append(
            {"image": str(images[name]), "label": label, "patient": row["Patient ID"], "view": row.get(VIEW_COLUMN)}
        )
    if problems:
        message = f"{len(problems)} bad row(s) in {csv_path}:\n  " + "\n  ".join(problems[:20])
        if not skip_bad:
            raise DatasetLayoutError(message + "\n(use skip_bad to drop them with a warning)")
        warnings.warn("skipping " + message, stacklevel=2)
    if not_listed:
        logger.warning("%d rows of %s are in neither split list and were ignored", not_listed, csv_path.name)

    test_patients = {it["patient"] for it in items["test"]}
    shared = test_patients & {it["patient"] for it in items["train_val"]}
    if shared:
        logger.warning("%d patients have images in both official lists (kept as listed)", len(shared))
    patients = [it["patient"] for it in items["train_val"]]
    source: dict[str, Any] = {"dataset_dir": str(root), "csv": csv_path.name}
    if fold is None:
        val_patients = split_patients(patients, val_fraction, seed)
        source.update(val_fraction=val_fraction, seed=seed)
    else:
        val_patients = set(validation_keys(patients, fold, num_folds, seed, what=f"train/val patients in {root}"))
        source.update(seed=seed, fold=fold, num_folds=num_folds)
    datalist = {
        "labels": list(LABELS),
        "source": source,
        "training": [it for it in items["train_val"] if it["patient"] not in val_patients],
        "validation": [it for it in items["train_val"] if it["patient"] in val_patients],
        "test": items["test"],
    }
    for key in ("training", "validation", "test"):
        if not datalist[key]:
            raise DatasetLayoutError(f"{root}: the {key} split is empty (view filter {view!r}?)")
    if output is not None:
        write_json_atomic(datalist, output)
    return datalist


def out_of_fold(datalist: dict[str, Any], num_folds: int, seed: int = 0) -> list[dict[str, Any]]:
    """Every train_val image of ``datalist`` (its training + validation) with ``"fold"``: the fold of ``num_folds``
    that validates its patient (the rule of ``prepare_datalist(fold=k)`` with the same ``seed``)."""
    items = datalist["training"] + datalist["validation"]
    folds = fold_of((it["patient"] for it in items), num_folds, seed, what="train/val patients")
    return [{**it, "fold": folds[it["patient"]]} for it in items]


def label_counts(items: list[dict[str, Any]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for it in items:
        counts.update(name for name, v in zip(LABELS, it["label"]) if v)
    return {name: counts[name] for name in LABELS}


def main(
    dataset_dir: str,
    output: str = "data/datalist.json",
    val_fraction: float = 0.1,
    seed: int = 0,
    view: str | None = None,
    skip_bad: bool = False,
    fold: int | None = None,
    num_folds: int = 5,
) -> None:
    """Write the datalist and print split sizes and label counts."""
    datalist = prepare_datalist(dataset_dir, output, val_fraction, seed, view, skip_bad, fold, num_folds)
    for key in ("training", "validation", "test"):
        n_patients = len({it["patient"] for it in datalist[key]})
        print(f"{key}: {len(datalist[key])} images, {n_patients} patients, {label_counts(datalist[key])}")
    print(f"wrote {output}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
