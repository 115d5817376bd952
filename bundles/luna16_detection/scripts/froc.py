"""The LUNA16 FROC and CPM, following the rules of the official ``noduleCADEvaluationLUNA16.py``.

- a detection hits a finding when its world distance to the centre is < radius (diameter / 2; excluded
  findings with diameter -1 use 10 mm);
- a nodule hit several times counts once, as a true positive with its highest score; its other hits are
  ignored (neither TP nor FP), and so is every hit on an excluded finding;
- every other detection is a false positive; FPs per scan divide by ALL scans evaluated (with or without
  nodules); nodules never hit stay in the denominator and cap the reachable sensitivity;
- sensitivities at 1/8, 1/4, 1/2, 1, 2, 4, 8 FPs per scan are read off the FROC curve by linear interpolation,
  CPM is their mean; a 95% CI comes from bootstrapping scans (official script: 1000 resamples).

    python -m scripts.froc --annotations annotations.csv --excluded annotations_excluded.csv \
        --predictions predictions.csv --seriesuids uids.txt --out_dir eval/
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_open, write_json_atomic

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
EXCLUDED_UNKNOWN_DIAMETER = 10.0
logger = logging.getLogger(__name__)

Findings = Mapping[str, Sequence[Sequence[float]]]  # seriesuid -> [[x, y, z, diameter], ...]
Detections = Mapping[str, Sequence[Sequence[float]]]  # seriesuid -> [[x, y, z, score], ...]


def match_scan(
    detections: Sequence[Sequence[float]],
    nodules: Sequence[Sequence[float]],
    excluded: Sequence[Sequence[float]] = (),
) -> tuple[list[float], list[float], int]:
    """Scores of the true positives (one per hit nodule) and of the false positives of one scan, and #nodules."""
    det = np.asarray(detections, dtype=float).reshape(-1, 4)
    hit_any = np.zeros(len(det), dtype=bool)  # hits on any finding are never false positives
    tp_scores = []
    for x, y, z, d in nodules:
        hits = np.linalg.norm(det[:, :3] - [x, y, z], axis=1) < d / 2
        if hits.any():  # as the official script, a detection inside two nodules counts for both
            tp_scores.append(float(det[hits, 3].max()))
        hit_any |= hits
    for x, y, z, d in excluded:
        radius = (EXCLUDED_UNKNOWN_DIAMETER if d < 0 else d) / 2
        hit_any |= np.linalg.norm(det[:, :3] - [x, y, z], axis=1) < radius
    return tp_scores, det[~hit_any, 3].tolist(), len(nodules)


def froc_curve(tp_scores: np.ndarray, fp_scores: np.ndarray, n_nodules: int, n_scans: int):
    """(FPs per scan, sensitivity, thresholds) over every distinct score threshold, lowest FP rate first."""
    scores = np.r_[tp_scores, fp_scores]
    is_tp = np.r_[np.ones(len(tp_scores)), np.zeros(len(fp_scores))]
    order = np.argsort(-scores, kind="stable")
    scores, is_tp = scores[order], is_tp[order]
    tp_cum, fp_cum = np.cumsum(is_tp), np.cumsum(1 - is_tp)
    last = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)  # end of each tie group
    fps = np.r_[0.0, fp_cum[last] / max(n_scans, 1)]
    sens = np.r_[0.0, tp_cum[last] / n_nodules if n_nodules else np.zeros(int(last.sum()))]
    thresholds = np.r_[np.inf, scores[last]]
    return fps, sens, thresholds


def sensitivities_at(fps: np.ndarray, sens: np.ndarray, rates: Sequence[float] = FP_RATES) -> np.ndarray:
    """Sensitivity at each FP rate, linearly interpolated (beyond the curve: its last sensitivity)."""
    return np.interp(rates, fps, sens)


def _collect(
    detections: Detections, nodules: Findings, excluded: Findings, seriesuids: Sequence[str]
) -> tuple[list[tuple[list[float], list[float], int]], list[str]]:
    unknown = sorted(set(detections) - set(seriesuids))
    if unknown:
        raise ValueError(f"detections for {len(unknown)} seriesuid(s) not in the evaluated scans, e.g. {unknown[:3]}")
    per_scan = [match_scan(detections.get(uid, []), nodules.get(uid, []), excluded.get(uid, [])) for uid in seriesuids]
    return per_scan, list(seriesuids)


def _froc_from_scans(per_scan: Sequence[tuple[list[float], list[float], int]]):
    tp = np.array([s for p in per_scan for s in p[0]], dtype=float)
    fp = np.array([s for p in per_scan for s in p[1]], dtype=float)
    n_nodules = sum(p[2] for p in per_scan)
    return froc_curve(tp, fp, n_nodules, len(per_scan)), len(tp), len(fp), n_nodules


def evaluate_froc(
    detections: Detections,
    nodules: Findings,
    excluded: Findings | None = None,
    seriesuids: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """FROC, sensitivities at the 7 official FP rates, CPM, bootstrap 95% CI (over scans)."""
    excluded = excluded or {}
    if seriesuids is None:
        seriesuids = sorted(set(nodules) | set(detections))
    if not seriesuids:
        raise ValueError("no scans to evaluate")
    if not any(nodules.get(uid) for uid in seriesuids):
        logger.warning("none of the %d evaluated scans has a nodule: sensitivity and CPM are 0 by definition",
                       len(seriesuids))  # fmt: skip
    per_scan, uids = _collect(detections, nodules, excluded, seriesuids)
    (fps, sens, thr), n_tp, n_fp, n_nodules = _froc_from_scans(per_scan)
    at = sensitivities_at(fps, sens)
    result: dict[str, Any] = {
        "cpm": float(at.mean()),
        "sensitivity_at_fp_rates": {str(r): float(s) for r, s in zip(FP_RATES, at)},
        "n_scans": len(uids),
        "n_nodules": n_nodules,
        "n_detected_nodules": n_tp,
        "n_false_positives": n_fp,
        "max_sensitivity": float(sens[-1]) if len(sens) else 0.0,
        "curve": {"fps_per_scan": fps.tolist(), "sensitivity": sens.tolist(), "threshold": thr.tolist()},
    }
    if n_bootstrap > 0 and len(per_scan) > 1:
        rng = np.random.default_rng(seed)
        boot = []
        for _ in range(n_bootstrap):
            sample = [per_scan[i] for i in rng.integers(0, len(per_scan), len(per_scan))]
            (bf, bs, _), *_ = _froc_from_scans(sample)
            if sum(p[2] for p in sample):
                boot.append(sensitivities_at(bf, bs))
        if not boot:  # no resample contains a nodule: no interval
            return result
        boot_arr = np.array(boot)
        result["bootstrap"] = {
            "n": len(boot),
            "cpm_ci95": [float(np.percentile(boot_arr.mean(1), 2.5)), float(np.percentile(boot_arr.mean(1), 97.5))],
            "sensitivity_ci95": {
                str(r): [float(np.percentile(boot_arr[:, i], 2.5)), float(np.percentile(boot_arr[:, i], 97.5))]
                for i, r in enumerate(FP_RATES)
            },
        }
    return result


def plot_froc(result: Mapping[str, Any], path: str | os.PathLike, title: str = "LUNA16 FROC") -> Path:
    """FROC curve (log FP axis) with the 7 operating points and CPM in the title; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    fps = np.asarray(result["curve"]["fps_per_scan"])
    sens = np.asarray(result["curve"]["sensitivity"])
    keep = fps > 0
    ax.plot(fps[keep], sens[keep], "b-", label="FROC")
    at = result["sensitivity_at_fp_rates"]
    ax.plot([float(r) for r in at], list(at.values()), "ro", label="official FP rates")
    if "bootstrap" in result:
        ci = result["bootstrap"]["sensitivity_ci95"]
        ax.fill_between([float(r) for r in ci], [c[0] for c in ci.values()], [c[1] for c in ci.values()],
                        color="b", alpha=0.15, label="95% CI (bootstrap)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlim(0.1, 10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{title}: CPM {result['cpm']:.3f} ({result['n_scans']} scans, {result['n_nodules']} nodules)")
    ax.legend(loc="lower right")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def read_predictions(path: str | os.PathLike) -> dict[str, list[list[float]]]:
    """A LUNA16 submission CSV (``seriesuid,coordX,coordY,coordZ,probability``) -> detections per scan."""
    path = Path(path)
    out: dict[str, list[list[float]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"seriesuid", "coordX", "coordY", "coordZ", "probability"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: header must have {sorted(need)}, found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                values = [float(row[k]) for k in ("coordX", "coordY", "coordZ", "probability")]
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line}: malformed row {row}") from e
            out.setdefault(row["seriesuid"], []).append(values)
    return out


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    return write_json_atomic(obj, path)


def main() -> None:
    from scripts.prepare import read_annotations

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True)
    p.add_argument("--excluded", default=None)
    p.add_argument("--predictions", required=True, help="submission CSV seriesuid,coordX,coordY,coordZ,probability")
    p.add_argument("--seriesuids", default=None, help="text file, one evaluated seriesuid a line (default: all)")
    p.add_argument("--out_dir", default=".")
    p.add_argument("--n_bootstrap", type=int, default=1000)
    a = p.parse_args()
    uids = Path(a.seriesuids).read_text().split() if a.seriesuids else None
    nodules = read_annotations(a.annotations)
    excluded = read_annotations(a.excluded, excluded=True) if a.excluded else {}
    if uids is not None:
        nodules = {k: v for k, v in nodules.items() if k in set(uids)}
    result = evaluate_froc(read_predictions(a.predictions), nodules, excluded, uids, a.n_bootstrap)
    write_json(result, Path(a.out_dir) / "froc.json")
    plot_froc(result, Path(a.out_dir) / "froc.png")
    print(json.dumps({k: result[k] for k in ("cpm", "sensitivity_at_fp_rates", "n_scans", "n_nodules")}, indent=1))


if __name__ == "__main__":
    main()
