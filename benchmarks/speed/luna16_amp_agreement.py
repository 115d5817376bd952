"""LUNA16 inference in the processor's mixed precision against fp32, with TRAINED weights, at the FROC's operating
points.

    python -m benchmarks.speed.luna16_amp_agreement [--benchmark_dir work_dirs/benchmark/luna16_detection]

Why: the speed benchmark (``benchmarks/speed/luna16.py``) compares seeded random weights, whose thousands of nearly
equal anchor scores let bf16 rounding change which boxes survive NMS and the 300-box cut. A user sees a trained
model's boxes at an operating point. This script runs the bundle's documented inference command
(``configs/inference.json`` + ``configs/demo.json``) with the model that ``make benchmark`` trained, on that
benchmark's test scans (subset0), twice: fp32 (``--use_amp false``) and mixed precision (``--use_amp true``: bf16
autocast and channels-last on CPUs with native bf16, ``common.amp``). Then, at each operating point of the LUNA16
FROC (1/8..8 false positives per scan; the score threshold where the fp32 run reaches it), it counts the fp32 boxes
at or above the threshold that the other run reproduces (centre within 1 mm, score within 0.01:
``agreement.match_detections``), and scores both runs with the FROC code of ``benchmarks/scoring.py``.
Wall times are of the whole command (process start and file reading included), one run each.
Writes ``benchmarks/results/luna16_amp_agreement.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import scoring
from benchmarks.speed import harness
from benchmarks.speed.agreement import match_detections

BUNDLE_DIR = harness.BUNDLES / "luna16_detection"
FP_RATES = scoring.LUNA16_FP_RATES


def run_inference(benchmark_dir: Path, out_dir: Path, use_amp: bool, threads: int) -> float:
    """The bundle's inference command on the benchmark's test subset; returns its wall time in seconds."""
    configs = "['configs/inference.json','configs/demo.json']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs]
    cmd += ["--dataset_dir", str(benchmark_dir / "dataset" / "subset0"), "--bundle_root", str(benchmark_dir)]
    cmd += ["--output_dir", str(out_dir), "--use_amp", str(use_amp)]
    env = {k: v for k, v in os.environ.items() if k != "BUNDLES_AMP"}  # the config decides, not the environment
    env.update(OMP_NUM_THREADS=str(threads), PYTHONHASHSEED="0", BUNDLES_PROGRESS="0")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=BUNDLE_DIR, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"inference (use_amp {use_amp}) failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def read_scan_outputs(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-scan JSON files the inference wrote: {seriesuid: {"boxes": [[x, y, z, w, h, d]], "scores": [...]}}."""
    outputs = {}
    for path in sorted(out_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if "seriesuid" in record:
            outputs[record["seriesuid"]] = record
    return outputs


def false_positive_thresholds(
    detections: dict[str, list[list[float]]],
    nodules: dict[str, list[tuple[float, float, float, float]]],
    excluded: dict[str, list[tuple[float, float, float, float]]],
    scans: list[str],
) -> dict[float, float]:
    """Per FP rate, the lowest score threshold at which the run has at most that many false positives per scan
    (false positives by the FROC's own rules, ``scoring.luna16_hits``)."""
    _, fp_scores, _ = scoring.luna16_hits(detections, nodules, excluded, scans)
    fp_scores.sort(reverse=True)
    out = {}
    for rate in FP_RATES:
        allowed = int(rate * len(scans))  # the threshold sits just above the (allowed+1)-th false positive
        out[rate] = fp_scores[allowed] + 1e-9 if allowed < len(fp_scores) else 0.0
    return out


def agreement_at_operating_points(
    ref: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]], thresholds: dict[float, float]
) -> dict[str, dict[str, Any]]:
    """Per FP rate: the reference (fp32) boxes at or above its threshold, and how many the other run reproduces
    (matched against all of the other run's boxes, so a box that moved just below the threshold still counts)."""
    result = {}
    for rate, thr in thresholds.items():
        n_ref = matched = 0
        for uid, rec in ref.items():
            keep = [i for i, s in enumerate(rec["scores"]) if s >= thr]
            sub = {"boxes": [rec["boxes"][i] for i in keep], "scores": [rec["scores"][i] for i in keep]}
            m = match_detections(sub, other.get(uid, {"boxes": [], "scores": []}))
            n_ref, matched = n_ref + m["n_reference"], matched + m["matched"]
        result[str(rate)] = {
            "threshold": round(thr, 5),
            "reference_boxes": n_ref,
            "matched": matched,
            "fraction": round(matched / n_ref, 4) if n_ref else 1.0,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark_dir", type=Path, default=harness.ROOT / "work_dirs/benchmark/luna16_detection")
    parser.add_argument("--work_dir", type=Path, default=harness.ROOT / "work_dirs" / "luna16_amp_agreement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=harness.ROOT / "benchmarks/results/luna16_amp_agreement.json")
    args = parser.parse_args()
    bench = args.benchmark_dir.resolve()
    if not (bench / "models" / "model.pt").is_file():
        parser.error(f"{bench}: no models/model.pt; run `python -m benchmarks.quality --bundles luna16_detection`")
    data = bench / "dataset"
    scans = sorted(p.stem for p in (data / "subset0").glob("*.mhd"))
    nodules = scoring.read_findings(data / "annotations.csv")
    excluded = scoring.read_findings(data / "annotations_excluded.csv")
    seconds, outputs, froc, submissions = {}, {}, {}, {}
    for name, use_amp in (("fp32", False), ("amp", True)):
        out = args.work_dir / name
        seconds[name] = round(run_inference(bench, out, use_amp, args.threads), 1)
        outputs[name] = read_scan_outputs(out)
        submissions[name] = scoring.read_submission(out / "submission.csv")
        froc[name] = scoring.luna16_froc(submissions[name], nodules, excluded, scans)
        print(f"{name}: {seconds[name]} s, CPM {froc[name]['cpm']:.4f}", flush=True)
    thresholds = false_positive_thresholds(submissions["fp32"], nodules, excluded, scans)
    agree = agreement_at_operating_points(outputs["fp32"], outputs["amp"], thresholds)
    all_boxes = [
        match_detections(outputs["fp32"][u], outputs["amp"].get(u, {"boxes": [], "scores": []})) for u in scans
    ]
    machine = harness.machine_info(args.threads)
    amp_side = "bf16 autocast, channels-last" if machine["native_bf16"] else "fp32 (no native bf16 on this CPU)"
    result = {
        "command": harness.command_line(),
        "machine": machine,
        "model": str(bench / "models" / "model.pt"),
        "data": f"{len(scans)} test scans of {data} (subset0)",
        "amp_side": f"--use_amp true: {amp_side}",
        "seconds": seconds,
        "speedup": round(seconds["fp32"] / seconds["amp"], 2),
        "froc": {
            name: {k: v for k, v in f.items() if k == "cpm" or k.startswith("sensitivity")} for name, f in froc.items()
        },
        "at_operating_points": agree,
        "all_boxes": {
            "reference_boxes": sum(m["n_reference"] for m in all_boxes),
            "matched": sum(m["matched"] for m in all_boxes),
        },
    }
    harness.write_results(args.out, result)
    for rate, a in agree.items():
        print(
            f"{rate} FP/scan: {a['matched']}/{a['reference_boxes']} fp32 boxes reproduced (threshold {a['threshold']})"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
