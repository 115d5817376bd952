"""Independent scoring of what the bundles WRITE, against the raw ground truth of the dataset layout.

The bundles score themselves with their own pipeline (datalist -> transforms -> metric handlers). A fault that is
consistent inside that pipeline (TC and ET swapped both when reading and when writing labels, a label order
shuffled in the datalist and in the output names, world coordinates flipped both ways) can leave those numbers
unchanged while every file a user receives is wrong. So the quality benchmark also scores the bundles' output
files - segmentations, submission CSV, probability CSV - with code written separately from the bundles, from
the raw files a user has (``*_seg.nii.gz``, ``annotations.csv``, ``Data_Entry_2017.csv``) and the rules in
REFERENCE.md section 2. Nothing here imports bundle code: it is the oracle, so it must not share their bugs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

# BraTS label values of each region per edition (REFERENCE.md section 1)
BRATS_REGIONS = {
    "2021": {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)},
    "2023": {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)},
}
# ... and of each label: necrosis / non-enhancing core, edema, enhancing tumour
BRATS_LABELS = {"2021": {"NCR": 1, "ED": 2, "ET": 4}, "2023": {"NCR": 1, "ED": 2, "ET": 3}}
LUNA16_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# ---------------------------------------------------------------- BraTS: written label maps


def dice_brats_rule(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; both empty 1, exactly one empty 0 (the legacy BraTS rule)."""
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def score_brats_segmentations(pairs: Iterable[tuple[Path, Path]], edition: str) -> dict[str, float]:
    """Mean Dice per region and per label over (written segmentation, reference segmentation) pairs of one edition;
    also the fraction of cases whose written file keeps the reference's grid (shape and affine) and the edition's
    labels. Per-label Dice sees a mix-up of label values that the nested regions hide (e.g. TC and ET swapped when
    writing: the whole core becomes enhancing, and no necrosis is left)."""
    regions = {**BRATS_REGIONS[edition], **{f"label_{k}": (v,) for k, v in BRATS_LABELS[edition].items()}}
    allowed = {0, *BRATS_LABELS[edition].values()}
    dices: dict[str, list[float]] = {r: [] for r in regions}
    grid_ok, labels_ok, n = 0, 0, 0
    for pred_file, ref_file in pairs:
        pred_img, ref_img = nib.load(str(pred_file)), nib.load(str(ref_file))
        pred, ref = np.asarray(pred_img.dataobj), np.asarray(ref_img.dataobj)
        n += 1
        same_grid = pred.shape == ref.shape and np.allclose(pred_img.affine, ref_img.affine, atol=1e-4)
        grid_ok += same_grid
        labels_ok += set(np.unique(pred).tolist()) <= allowed
        for region, values in regions.items():
            p = np.isin(pred, values) if same_grid else np.zeros(ref.shape, bool)
            dices[region].append(dice_brats_rule(p, np.isin(ref, values)))
    if n == 0:
        raise ValueError("no segmentation to score")
    out = {f"dice_{r}": float(np.mean(v)) for r, v in dices.items()}
    out.update(same_grid=grid_ok / n, edition_labels=labels_ok / n, n_cases=float(n))
    return out


# ---------------------------------------------------------------- CXR14: probability CSV


def read_nih_labels(entry_csv: Path, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """``Image Index`` -> {label: 0/1} from NIH's ``Finding Labels`` column (``|``-separated, ``No Finding``)."""
    truth = {}
    with open(entry_csv, newline="") as f:
        for row in csv.DictReader(f):
            found = set(row["Finding Labels"].split("|"))
            truth[row["Image Index"]] = {n: int(n in found) for n in names}
    return truth


def read_probabilities(predictions_csv: Path) -> dict[str, dict[str, float]]:
    """``image`` column (a path) -> {label: probability} from the inference CSV, keyed by file stem."""
    with open(predictions_csv, newline="") as f:
        return {
            Path(row.pop("image")).stem: {k: float(v) for k, v in row.items()} for row in csv.DictReader(f)
        }  # fmt: skip


def auroc_mann_whitney(scores: Sequence[float], labels: Sequence[int]) -> float:
    """P(score of a positive > score of a negative), ties one half; NaN without both classes."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def score_cxr_probabilities(
    probabilities: Mapping[str, Mapping[str, float]], truth: Mapping[str, Mapping[str, int]], names: Sequence[str]
) -> dict[str, float]:
    """Per-label AUROC (by label NAME, images matched by name) and their mean over the scorable labels."""
    images = sorted(probabilities)
    missing = [i for i in images if f"{i}.png" not in truth]
    if missing:
        raise ValueError(f"{len(missing)} predicted images are not in the label file, e.g. {missing[:3]}")
    per = {}
    for n in names:
        per[n] = auroc_mann_whitney([probabilities[i][n] for i in images], [truth[f"{i}.png"][n] for i in images])
    out = {f"auroc_{n}": v for n, v in per.items()}
    out["mean_auroc"] = float(np.nanmean(list(per.values())))
    return out


def max_abs_difference(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]) -> float:
    """Largest probability difference over the images and labels present in both (e.g. DICOM vs PNG copies)."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("no image in both prediction sets")
    return float(max(abs(a[i][k] - b[i][k]) for i in common for k in a[i]))


# ---------------------------------------------------------------- LUNA16: submission CSV


def read_findings(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """``seriesuid`` -> [(x, y, z, diameter_mm)] from annotations.csv / annotations_excluded.csv."""
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            c = tuple(float(row[k]) for k in ("coordX", "coordY", "coordZ", "diameter_mm"))
            out.setdefault(row["seriesuid"], []).append(c)  # type: ignore[arg-type]
    return out


def read_submission(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """``seriesuid`` -> [(x, y, z, probability)] from a LUNA16 submission CSV."""
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            d = tuple(float(row[k]) for k in ("coordX", "coordY", "coordZ", "probability"))
            out.setdefault(row["seriesuid"], []).append(d)  # type: ignore[arg-type]
    return out


def luna16_hits(
    detections: Mapping[str, Sequence[Sequence[float]]],
    nodules: Mapping[str, Sequence[Sequence[float]]],
    excluded: Mapping[str, Sequence[Sequence[float]]],
    scans: Sequence[str],
) -> tuple[list[float], list[float], int]:
    """The official hit rules of ``luna16_froc``: the true-positive score of each nodule found (its best hit), the
    scores of the false positives, and the number of nodules over ``scans``."""
    tp_scores: list[float] = []
    fp_scores: list[float] = []
    n_nodules = 0
    for uid in scans:
        dets = detections.get(uid, [])
        found = nodules.get(uid, [])
        n_nodules += len(found)
        ignored = [False] * len(dets)
        for nx, ny, nz, nd in found:
            hits = [i for i, (x, y, z, _) in enumerate(dets) if math.dist((x, y, z), (nx, ny, nz)) < nd / 2]
            if hits:
                tp_scores.append(max(dets[i][3] for i in hits))
            for i in hits:
                ignored[i] = True
        for ex, ey, ez, ed in excluded.get(uid, []):
            radius = (10.0 if ed < 0 else ed) / 2
            for i, (x, y, z, _) in enumerate(dets):
                if math.dist((x, y, z), (ex, ey, ez)) < radius:
                    ignored[i] = True
        fp_scores += [dets[i][3] for i in range(len(dets)) if not ignored[i]]
    return tp_scores, fp_scores, n_nodules


def luna16_froc(
    detections: Mapping[str, Sequence[Sequence[float]]],
    nodules: Mapping[str, Sequence[Sequence[float]]],
    excluded: Mapping[str, Sequence[Sequence[float]]],
    scans: Sequence[str],
) -> dict[str, float]:
    """LUNA16 FROC by the official rules, written as plainly as possible: per scan, each detection is checked
    against every nodule (hit: distance < radius, world mm); a nodule keeps its best hit as true positive, its
    other hits are ignored, hits on excluded findings (diameter -1 -> 10 mm) are ignored, the rest are false
    positives. The threshold sweeps every score; sensitivity at 1/8..8 FPs per scan (over all scans) is
    interpolated linearly; CPM is their mean."""
    tp_scores, fp_scores, n_nodules = luna16_hits(detections, nodules, excluded, scans)
    thresholds = sorted(set(tp_scores) | set(fp_scores), reverse=True)
    fps = [0.0] + [sum(s >= t for s in fp_scores) / len(scans) for t in thresholds]
    sens = [0.0] + [sum(s >= t for s in tp_scores) / max(n_nodules, 1) for t in thresholds]
    at = [float(np.interp(r, fps, sens)) for r in LUNA16_FP_RATES]
    out = {f"sensitivity@{r}fp": s for r, s in zip(LUNA16_FP_RATES, at)}
    out.update(cpm=float(np.mean(at)), n_nodules=float(n_nodules), n_scans=float(len(scans)))
    out.update(n_detected_nodules=float(len(tp_scores)), n_false_positives=float(len(fp_scores)))
    out["max_sensitivity"] = len(tp_scores) / max(n_nodules, 1)
    return out
