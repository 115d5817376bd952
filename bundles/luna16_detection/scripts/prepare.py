"""LUNA16 root (``subset0..9/*.mhd``, ``annotations.csv``, optional ``annotations_excluded.csv``) -> datalists.

One datalist per official fold k: ``test`` = subset k, ``validation`` = subset (k+1) mod 10 (model selection),
``training`` = the other subsets. A root with only some subsets (a partial download, e.g. subset0 alone) gives
``datalist_eval.json`` instead (every scan found, as ``test``, for evaluation or inference) plus the folds whose
training and validation subsets are all there, and one log line naming the subsets found and missing; training a
fold with a missing training or validation subset is an error naming them. Every item:

    {"image": ".../subsetK/<uid>.mhd", "seriesuid": uid, "subset": K,
     "box": [[x, y, z, d, d, d], ...],   # world mm, ITK/LPS, cccwhd (as annotations.csv)
     "label": [0, ...],                  # one class: nodule
     "nodules": [[x, y, z, d], ...],     # untouched copy for the FROC (the transforms turn "box" into voxels)
     "excluded": [[x, y, z, d], ...]}    # annotations_excluded.csv, d = -1 means "use 10 mm"

Checks made before any training (each error names the file and, for CSV rows, the line):
- .mhd header readable with DimSize/ElementSpacing/Offset; its .raw present and of the size the header promises.
- CSV header has the LUNA16 columns; rows with a wrong field count, non-numeric or NaN values, or a
  diameter <= 0 (annotations) / negative other than -1 (excluded) are errors.
- a nodule centre outside its scan is an error (``outside="drop"`` drops it with a warning instead).
- annotations whose seriesuid has no scan under the root are skipped with a warning naming how many (a partial
  download of the subsets is common); ``strict=True`` makes that an error.

    python -m scripts.prepare --dataset_dir /data/LUNA16 --out_dir ./data [--resample_to /data/LUNA16_resampled]

It exits non-zero, writing nothing, with a one-line message naming the folder or file on any of these errors
and when there is nothing to write: no subset folder, no .mhd scan in them, no annotations.csv.

``--resample_to`` also writes a copy resampled to 0.703125 x 0.703125 x 1.25 mm (same layout, annotations
unchanged because they are world coordinates); otherwise the configs resample on the fly (``resample: true``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.files import has_dicom_preamble, write_json_atomic

logger = logging.getLogger(__name__)

N_FOLDS = 10
COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
ELEMENT_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
COORDINATES = "world mm, ITK/LPS physical space (as annotations.csv); box mode cccwhd"


class LunaDataError(ValueError):
    """Bad LUNA16 input; the message names the file."""


def read_mhd_header(path: str | os.PathLike) -> dict[str, Any]:
    """Geometry of a MetaImage file, checked against its data file (missing or truncated .raw is an error)."""
    path = Path(path)
    if not path.is_file():
        raise LunaDataError(f"{path}: MetaImage header not found")
    fields: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            fields[k.strip()] = v.strip()
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        spacing = [float(v) for v in fields.get("ElementSpacing", fields.get("ElementSize", "")).split()]
        origin = [float(v) for v in fields.get("Offset", fields.get("Origin", fields.get("Position", ""))).split()]
        matrix = fields.get("TransformMatrix", fields.get("Rotation", fields.get("Orientation", "1 0 0 0 1 0 0 0 1")))
        direction = np.array([float(v) for v in matrix.split()]).reshape(3, 3).T  # stored column by column
        element = fields["ElementType"]
        data_file = fields["ElementDataFile"]
    except (KeyError, ValueError) as e:
        raise LunaDataError(f"{path}: not a readable 3D MetaImage header ({type(e).__name__}: {e})") from e
    if len(dims) != 3 or len(spacing) != 3 or len(origin) != 3:
        raise LunaDataError(f"{path}: expected a 3D image, got DimSize={dims} ElementSpacing={spacing}")
    if data_file != "LOCAL":
        raw = path.parent / data_file
        if not raw.is_file():
            raise LunaDataError(f"{path}: its data file {raw.name} is missing (expected beside the .mhd)")
        if fields.get("CompressedData", "False").lower() != "true" and element in ELEMENT_BYTES:
            expected = int(np.prod(dims)) * ELEMENT_BYTES[element] * int(fields.get("ElementNumberOfChannels", 1))
            actual = raw.stat().st_size
            if actual < expected:
                raise LunaDataError(f"{raw}: truncated, {actual} bytes but the header promises {expected}")
    return {"dims": dims, "spacing": spacing, "origin": origin, "direction": direction}


def world_to_index(header: dict[str, Any], point: np.ndarray) -> np.ndarray:
    """Continuous voxel index (x, y, z) of a world LPS point for a MetaImage geometry."""
    d = np.asarray(header["direction"], float)
    return np.linalg.solve(d, np.asarray(point, float) - header["origin"]) / np.asarray(header["spacing"])


def read_annotations(path: str | os.PathLike, excluded: bool = False) -> dict[str, list[list[float]]]:
    """``{seriesuid: [[x, y, z, diameter], ...]}`` from a LUNA16 CSV, every row checked (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise LunaDataError(f"{path}: annotation file not found")
    out: dict[str, list[list[float]]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[: len(COLUMNS)] != COLUMNS:
            raise LunaDataError(f"{path}: header must start with {','.join(COLUMNS)}, found {','.join(header)}")
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(COLUMNS):
                raise LunaDataError(f"{path}:{line}: expected {len(COLUMNS)} fields, found {len(row)}: {row}")
            uid = row[0].strip()
            try:
                values = [float(v) for v in row[1:5]]
            except ValueError as e:
                raise LunaDataError(f"{path}:{line}: non-numeric coordinate or diameter: {row}") from e
            if not uid or not all(math.isfinite(v) for v in values):
                raise LunaDataError(f"{path}:{line}: empty seriesuid or NaN/infinite value: {row}")
            diameter = values[3]
            if excluded and not (diameter > 0 or diameter == -1):
                raise LunaDataError(f"{path}:{line}: diameter must be > 0 or -1 ('use 10 mm'), got {diameter}")
            if not excluded and diameter <= 0:
                raise LunaDataError(f"{path}:{line}: nodule diameter must be > 0 mm, got {diameter}")
            out.setdefault(uid, []).append(values)
    return out


def find_scans(dataset_dir: str | os.PathLike) -> dict[str, tuple[int, Path]]:
    """``{seriesuid: (subset, path)}`` for every ``subsetK/*.mhd`` under the LUNA16 root (any of the subsets)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise LunaDataError(f"{root}: dataset directory not found")
    folders = [root / f"subset{k}" for k in range(N_FOLDS) if (root / f"subset{k}").is_dir()]
    if not folders:
        raise LunaDataError(
            f"{root}: no subset0..subset9 folder; expected the LUNA16 layout (subsetK/<seriesuid>.mhd + .raw, "
            "annotations.csv), e.g. subset0.zip unpacked here"
        )
    scans: dict[str, tuple[int, Path]] = {}
    for folder in folders:
        for mhd in sorted(folder.glob("*.mhd")):
            scans[mhd.stem] = (int(folder.name[len("subset") :]), mhd)
    if not scans:
        names = ", ".join(f.name for f in folders)
        raise LunaDataError(f"{root}: no .mhd scans in {names} (each scan is <seriesuid>.mhd + .raw; unpacked?)")
    return scans


def subset_names(subsets: list[int]) -> str:
    """``[0, 2, 3, 4, 7]`` -> ``"subset0, subset2..subset4, subset7"`` (runs of three or more shortened)."""
    runs: list[list[int]] = []
    for k in sorted(set(subsets)):
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    parts = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"subset{run[0]}..subset{run[-1]}")
        else:
            parts += [f"subset{k}" for k in run]
    return ", ".join(parts) or "none"


def _present(scans: dict[str, tuple[int, Path]]) -> list[int]:
    return sorted({k for k, _ in scans.values()})


def build_items(
    dataset_dir: str | os.PathLike,
    outside: str = "error",
    strict: bool = False,
    subsets: list[int] | None = None,
) -> list[dict[str, Any]]:
    """One checked datalist item per scan under ``dataset_dir`` (all subsets found, or only ``subsets``, which
    must all be there). A root with only some of the subsets is logged in one line: found, missing."""
    if outside not in ("error", "drop"):
        raise ValueError(f"outside must be 'error' or 'drop', got {outside!r}")
    root = Path(dataset_dir)
    scans = find_scans(root)
    present = _present(scans)
    if subsets is not None:
        bad = [k for k in subsets if not 0 <= k < N_FOLDS]
        if bad:
            raise ValueError(f"subsets must be in 0..{N_FOLDS - 1}, got {bad}")
        absent = [k for k in subsets if k not in present]
        if absent:
            raise LunaDataError(
                f"{root}: {subset_names(absent)} requested but not found (found {subset_names(present)}); "
                f"download {subset_names(absent)} of LUNA16 (https://luna16.grand-challenge.org/) into {root} or "
                "choose subsets that are there"
            )
    nodules = read_annotations(root / "annotations.csv")
    excluded_file = root / "annotations_excluded.csv"
    excluded = read_annotations(excluded_file, excluded=True) if excluded_file.is_file() else {}
    unknown = sorted(set(nodules) - set(scans))
    missing = [k for k in range(N_FOLDS) if k not in present]
    if unknown:
        msg = f"{root / 'annotations.csv'}: {len(unknown)} seriesuid(s) have no scan under {root}, e.g. {unknown[:3]}"
        if strict:
            raise LunaDataError(msg)
        if not missing:
            logger.warning("%s; their annotations are skipped", msg)
    if missing:  # a partial download: one line, not one per fold or per seriesuid
        counts = ", ".join(f"subset{k} ({sum(s == k for s, _ in scans.values())} scans)" for k in present)
        skipped = f"; annotations of {len(unknown)} seriesuid(s) without a scan skipped" if unknown else ""
        logger.warning(
            "LUNA16 at %s: found %s; missing %s%s. Evaluation (--eval_subsets) and inference can use the subsets "
            "found; training fold k needs every subset but subset k",
            root,
            counts,
            subset_names(missing),
            skipped,
        )
    items = []
    for uid, (subset, mhd) in sorted(scans.items(), key=lambda kv: (kv[1][0], kv[0])):
        if subsets is not None and subset not in subsets:
            continue
        header = read_mhd_header(mhd)
        kept = []
        for x, y, z, d in nodules.get(uid, []):
            idx = world_to_index(header, np.array([x, y, z]))
            if np.any(idx < -0.5) or np.any(idx > np.asarray(header["dims"]) - 0.5):
                msg = (
                    f"{root / 'annotations.csv'}: nodule ({x}, {y}, {z}) of {uid} lies outside its scan {mhd} "
                    f"(voxel index {np.round(idx, 1).tolist()}, size {header['dims']}); world/voxel mix-up?"
                )
                if outside == "error":
                    raise LunaDataError(msg)
                logger.warning("%s; dropped", msg)
                continue
            kept.append([x, y, z, d])
        items.append(
            {
                "image": str(mhd.resolve()),
                "seriesuid": uid,
                "subset": subset,
                "box": [[x, y, z, d, d, d] for x, y, z, d in kept],
                "label": [0] * len(kept),
                "nodules": kept,
                "excluded": excluded.get(uid, []),
            }
        )
    return items


def fold_subsets(fold: int) -> dict[str, list[int]]:
    """Official fold ``fold``: test = subset fold, validation = subset fold+1 (mod 10), training = the rest."""
    if not 0 <= fold < N_FOLDS:
        raise ValueError(f"fold must be 0..9, got {fold}")
    val = (fold + 1) % N_FOLDS
    return {"training": [k for k in range(N_FOLDS) if k not in (fold, val)], "validation": [val], "test": [fold]}


def check_fold(present: list[int], fold: int, where: str | os.PathLike = "the dataset") -> None:
    """A fold trains on all of its training subsets and selects the model on its validation subset: each missing
    one is an error naming it (training on fewer subsets, or on none, is not the official fold)."""
    parts = fold_subsets(fold)
    missing = [k for k in parts["training"] + parts["validation"] if k not in present]
    if missing:
        raise LunaDataError(
            f"{where}: fold {fold} cannot train: it trains on {subset_names(parts['training'])} and validates on "
            f"{subset_names(parts['validation'])}, but {subset_names(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing (found {subset_names(present)}). Download "
            f"{subset_names(missing)} of LUNA16 (https://luna16.grand-challenge.org/) into {where}; to score a "
            f'trained model on the subsets you have: evaluating with --eval_subsets "{present}"'
        )


def split_fold(items: list[dict[str, Any]], fold: int) -> dict[str, list[dict[str, Any]]]:
    """Official fold ``fold`` (``fold_subsets``); its training and validation subsets must all have scans
    (``check_fold``); the test split may be empty (its subset is only needed to evaluate)."""
    parts = fold_subsets(fold)
    check_fold(sorted({i["subset"] for i in items}), fold)
    return {name: [i for i in items if i["subset"] in ks] for name, ks in parts.items()}


def fold_datalist(dataset_dir: str | os.PathLike, fold: int = 0, outside: str = "error") -> dict[str, Any]:
    """Datalist of one fold, built from the real layout; what the configs call with ``dataset_dir``."""
    check_fold(_present(find_scans(dataset_dir)), fold, dataset_dir)  # before reading every header
    out: dict[str, Any] = {"coordinates": COORDINATES, "fold": fold}
    out.update(split_fold(build_items(dataset_dir, outside=outside), fold))
    counts = ", ".join(f"{k} {len(out[k])}" for k in ("training", "validation", "test"))
    logger.info("LUNA16 at %s, fold %d: %s scans", dataset_dir, fold, counts)
    return out


def eval_datalist(
    dataset_dir: str | os.PathLike,
    subsets: int | list[int],
    fold: int | list[int] | None = None,
    outside: str = "error",
) -> dict[str, Any]:
    """Every scan of ``subsets`` as ``test`` (what ``evaluate.json`` scores, ``eval_subsets``): needs only these
    subsets and annotations.csv under ``dataset_dir``, no training split. With ``fold`` (one fold, or the folds of
    an ensemble's models), subsets that a fold trains or selects the model on are named in one warning (the score
    would not be held out)."""
    subsets = sorted({int(k) for k in ([subsets] if isinstance(subsets, int) else subsets)})
    if not subsets:
        raise ValueError("no subsets to evaluate (eval_subsets is empty)")
    items = build_items(dataset_dir, outside=outside, subsets=subsets)
    folds = [] if fold is None else [fold] if isinstance(fold, int) else sorted(set(fold))
    used = []
    for k in folds:
        parts = fold_subsets(k)
        seen = {name: [s for s in subsets if s in parts[name]] for name in ("training", "validation")}
        if any(seen.values()):
            roles = ", ".join(f"{subset_names(ks)} in its {name} split" for name, ks in seen.items() if ks)
            used.append((k, roles))
    if len(folds) == 1 and used:
        logger.warning(
            "evaluating on subsets that fold %d uses (%s): not a held-out score for a model trained on fold %d "
            "(--fold names the model's fold)",
            used[0][0],
            used[0][1],
            used[0][0],
        )
    elif used:
        logger.warning(
            "evaluating on subsets that the ensemble's folds use (%s): not a held-out score for an ensemble of "
            "folds %s; score an ensemble on scans outside its folds' subsets (another --dataset_dir)",
            "; ".join(f"fold {k}: {roles}" for k, roles in used),
            ", ".join(map(str, folds)),
        )
    n_nodules = sum(len(i["nodules"]) for i in items)
    logger.info("LUNA16 at %s, evaluation on %s: %d scans, %d nodules", dataset_dir, subset_names(subsets),
                len(items), n_nodules)  # fmt: skip
    return {"coordinates": COORDINATES, "subsets": subsets, "test": items}


def inference_items(input_path: str | os.PathLike, subsets: list[int] | None = None) -> list[dict[str, Any]]:
    """Scans to run inference on: a LUNA16 root (optionally only ``subsets``), a folder of .mhd files, one .mhd,
    or one DICOM series folder (read by ITK as a series; its SeriesInstanceUID names the outputs)."""
    p = Path(input_path)
    if p.is_file() and p.suffix == ".mhd":
        read_mhd_header(p)
        return [{"image": str(p.resolve()), "seriesuid": p.stem}]
    if not p.is_dir():
        raise LunaDataError(f"{p}: not a .mhd file or a folder")
    if subsets is not None:
        mhds = [m for k in subsets for m in sorted(p.glob(f"subset{k}/*.mhd"))]
    else:
        mhds = sorted(p.glob("subset*/*.mhd")) or sorted(p.glob("*.mhd"))
    if mhds:
        for m in mhds:
            read_mhd_header(m)
        return [{"image": str(m.resolve()), "seriesuid": m.stem} for m in mhds]
    dicoms = [f for f in sorted(p.iterdir()) if f.is_file() and has_dicom_preamble(f)]
    if dicoms:
        import pydicom

        uids = {str(pydicom.dcmread(f, stop_before_pixels=True).get("SeriesInstanceUID", "")) for f in dicoms}
        if len(uids) != 1:
            raise LunaDataError(f"{p}: expected one DICOM series, found {len(uids)} SeriesInstanceUIDs")
        return [{"image": str(p.resolve()), "seriesuid": uids.pop() or p.name}]
    raise LunaDataError(f"{p}: no .mhd scans (subset*/ or top level) and no DICOM files found")


def write_datalists(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, outside: str = "error") -> list[Path]:
    """Write ``datalist_fold{k}.json`` for every fold whose training and validation subsets are all there and, when
    some subsets are missing, ``datalist_eval.json`` (every scan found, as ``test``: for evaluation or inference
    on the subsets found); returns the files written. No scan, or no annotations.csv, is a LunaDataError."""
    items = build_items(dataset_dir, outside=outside)
    present = sorted({i["subset"] for i in items})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fold in range(N_FOLDS):
        try:
            split = split_fold(items, fold)
        except LunaDataError:
            continue  # the partial download is logged once by build_items
        target = out / f"datalist_fold{fold}.json"
        write_json_atomic({"coordinates": COORDINATES, "fold": fold, **split}, target)
        written.append(target)
    if len(present) < N_FOLDS:
        target = out / "datalist_eval.json"
        write_json_atomic({"coordinates": COORDINATES, "subsets": present, "test": items}, target)
        written.append(target)
    return written


def resample_dataset(
    dataset_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    spacing: tuple[float, float, float] = (0.703125, 0.703125, 1.25),
) -> Path:
    """Write a resampled copy of a LUNA16 root in the same layout (int16 HU MetaImage, same origin and direction).

    Annotations are world millimetres, so they are copied unchanged; train with ``--dataset_dir <out_root>
    --resample False`` to skip the on-the-fly resampling. Existing outputs are kept (the step can resume).
    """
    import shutil

    import itk

    src, dst = Path(dataset_dir), Path(out_root)
    for name in ("annotations.csv", "annotations_excluded.csv"):
        if (src / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)
    for uid, (subset, mhd) in sorted(find_scans(src).items()):
        target = dst / f"subset{subset}" / mhd.name
        if target.is_file():
            continue
        read_mhd_header(mhd)
        image = itk.imread(str(mhd), itk.F)
        old_size = np.array(itk.size(image), float)
        old_spacing = np.array(itk.spacing(image), float)
        size = [int(round(n)) for n in old_size * old_spacing / np.asarray(spacing)]
        resampled = itk.resample_image_filter(
            image,
            size=size,
            output_spacing=[float(s) for s in spacing],
            output_origin=itk.origin(image),
            output_direction=image.GetDirection(),
            default_pixel_value=-1024.0,
            interpolator=itk.LinearInterpolateImageFunction.New(image),
        )
        array = np.clip(np.round(itk.array_view_from_image(resampled)), -32768, 32767).astype(np.int16)
        out = itk.image_from_array(array)
        out.CopyInformation(resampled)
        tmp_dir = target.parent / f".tmp_{uid}"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        itk.imwrite(out, str(tmp_dir / mhd.name), compression=False)
        os.replace(tmp_dir / mhd.with_suffix(".raw").name, target.with_suffix(".raw"))
        os.replace(tmp_dir / mhd.name, target)
        tmp_dir.rmdir()
        logger.info("resampled %s -> %s (%s voxels)", mhd.name, target, size)
    return dst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="LUNA16 root with subset0..9 and annotations.csv")
    p.add_argument("--out_dir", required=True, help="where the datalist_fold{k}.json files go")
    p.add_argument("--outside", choices=["error", "drop"], default="error", help="nodules outside their scan")
    p.add_argument("--resample_to", default=None, help="also write a resampled copy of the dataset here")
    p.add_argument("--spacing", type=float, nargs=3, default=[0.703125, 0.703125, 1.25])
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    root = a.dataset_dir
    try:
        if a.resample_to:
            root = resample_dataset(a.dataset_dir, a.resample_to, tuple(a.spacing))
        written = write_datalists(root, a.out_dir, a.outside)
    except LunaDataError as e:
        raise SystemExit(f"scripts.prepare: error: {e}; no datalist written") from None
    for f in written:
        print(f)


if __name__ == "__main__":
    main()
