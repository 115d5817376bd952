"""Folds, ensembles and mirroring test-time augmentation (TTA), measured on a seeded synthetic set (issue 19).

    python -m benchmarks.ensemble --work_dir work_dirs/ensemble --out benchmarks/results/ensemble.json

BraTS protocol (``brats_segmentation``), in fp32 with 2 threads (``benchmarks.quality.benchmark_env``):

1. ``scripts.synthetic``: ``--n_cases`` cases in the 2021 layout of ``--size`` voxels, generator seed 0; the
   bundle's split (split seed 12345) fixes the test cases, the other cases make ``--folds`` folds.
2. Train every fold: ``configs/train.json`` + ``configs/demo.json`` with ``--fold k --num_folds K``, ``--epochs``
   epochs, validation every ``--val_interval`` epochs (the best validation Dice is ``models/fold{k}/model.pt``).
3. Score on the fixed test split with evaluate.json's official metrics (per-region Dice and HD95, BraTS and NaN
   empty-case rules): each fold alone (``evaluate.json --fold k``), each fold with TTA, the K-fold ensemble and the
   ensemble with TTA (``evaluate_ensemble.json``), with all 8 flips and with the identity + 3 single-axis flips.
4. Inference cost: the time of the inferer alone (sliding window, flips, networks; no file reading) on the
   preprocessed test volumes, the fastest of ``--repeats`` interleaved runs per mode, relative to one model without TTA.

Writes ``{"brats_segmentation": {"single", "tta", "ensemble", "ensemble_tta", "variants", "cost", "protocol"}}``.
"single" and "tta" are the means over the K folds (each fold's figures in "per_fold").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.quality import benchmark_env
from benchmarks.speed.harness import machine_info
from common.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BRATS = ROOT / "bundles" / "brats_segmentation"
REGIONS = ("TC", "WT", "ET")
METRICS = ("test_dice", "test_hd95", "test_dice_nan", "test_hd95_nan")


def shown(cmd: list[str]) -> str:
    """A command as typed from the bundle directory: repository paths relative to it, config lists in "..."."""
    args = ["python", *(a.replace(f"{ROOT}/", "../../") for a in cmd[1:])]
    return " ".join(f'"{a}"' if "'" in a and '"' not in a else shlex.quote(a) for a in args)


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: list[dict[str, Any]]) -> float:
    """Run one command from ``cwd``; record it (as typed from the bundle directory) and its wall time."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.append({"command": shown(cmd), "seconds": round(seconds, 1)})
    if result.returncode != 0:
        raise RuntimeError(
            f"failed ({result.returncode}): {shown(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    print(f"{seconds:7.1f} s  {shown(cmd)}", flush=True)
    return seconds


def read_metrics(folder: Path) -> dict[str, float]:
    """``metrics.csv`` of an evaluation (MetricsSaver: ``name,value`` lines) -> the per-region figures."""
    values: dict[str, float] = {}
    with open(folder / "metrics.csv") as f:
        for row in csv.reader(f, delimiter=","):
            if len(row) == 2:
                values[row[0]] = float(row[1])
    return {f"{m}_{r}": values[f"{m}_{r}"] for m in METRICS for r in REGIONS} | {m: values[m] for m in METRICS}


def mean_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}


def rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


def inference_cost(work: Path, folds: int, roi: list[int], repeats: int) -> dict[str, Any]:
    """Seconds of the inferer per test volume for each mode, in this process (2 threads, fp32); the modes are
    interleaved in every repeat so that load from other processes spreads over all of them."""
    import torch

    os.environ["BUNDLES_AMP"] = "0"
    torch.set_num_threads(2)
    sys.path.insert(0, str(BRATS))
    from monai.bundle import ConfigParser

    from common.checkpoint import load_weights
    from scripts.prepare import load_split

    def parsed(names: tuple[str, ...], **over: Any) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config([str(BRATS / "configs" / n) for n in names])
        parser.update({"bundle_root": str(work), "dataset_dir": str(work / "dataset"), "val_roi_size": roi, **over})
        parser.get_parsed_content("imports")
        return parser

    models = [str(work / "models" / f"fold{k}" / "model.pt") for k in range(folds)]
    modes = {
        "single": (models[:1], False, "all"),
        "tta": (models[:1], True, "all"),
        "tta_axes": (models[:1], True, "axes"),
        "ensemble": (models, False, "all"),
        "ensemble_tta": (models, True, "all"),
        "ensemble_tta_axes": (models, True, "axes"),
    }
    plain = parsed(("inference.json", "demo.json"))
    network = load_weights(plain.get_parsed_content("network"), models[0])
    preprocessing = plain.get_parsed_content("preprocessing")
    images = [preprocessing({"image": c["image"]})["image"][None] for c in load_split(work / "dataset", "testing")]
    runners = {"plain inference.json": (lambda x: plain.get_parsed_content("inferer")(x, network.eval()), 1)}
    for mode, (paths, tta, flips) in modes.items():
        over = {"ckpt_paths": paths, "tta": tta, "tta_flips": flips}
        inferer = parsed(("inference.json", "demo.json", "inference_ensemble.json"), **over).get_parsed_content(
            "ensemble_inferer"
        )
        runners[mode] = (lambda x, inferer=inferer: inferer(x, None), inferer.passes())
    times: dict[str, list[float]] = {mode: [] for mode in runners}
    with torch.no_grad():
        for fn, _ in runners.values():
            fn(images[0])  # warm-up
        for _ in range(repeats):
            for mode, (fn, _) in runners.items():
                start = time.perf_counter()
                for image in images:
                    fn(image)
                times[mode].append((time.perf_counter() - start) / len(images))
    seconds = {mode: min(t) for mode, t in times.items()}  # the least disturbed run
    for mode, s in seconds.items():
        print(f"cost {mode}: {s:.3f} s per volume ({runners[mode][1]} passes)", flush=True)
    return {
        "seconds_per_volume": {k: round(v, 3) for k, v in seconds.items()},
        "network_passes": {k: n for k, (_, n) in runners.items()},
        "multiplier": {k: round(v / seconds["single"], 2) for k, v in seconds.items()},
        "volumes": len(images),
        "repeats": repeats,
    }


def brats(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir).resolve()
    env = benchmark_env()
    py = sys.executable
    log: list[dict[str, Any]] = []
    dataset = work / "dataset"
    size = json.dumps(args.size, separators=(",", ":"))
    if not dataset.is_dir():
        gen = ["-m", "scripts.synthetic", str(dataset), "--n_cases", str(args.n_cases), "--layout", "2021"]
        run([py, *gen, "--size", size, "--seed", "0"], BRATS, env, log)
    roi = json.dumps(args.val_roi_size, separators=(",", ":"))
    common = ["--dataset_dir", str(dataset), "--bundle_root", str(work), "--val_roi_size", roi]
    train_cfg = "['configs/train.json','configs/demo.json']"
    eval_cfg = "['configs/train.json','configs/evaluate.json','configs/demo.json']"
    ens_cfg = "['configs/train.json','configs/evaluate.json','configs/demo.json','configs/evaluate_ensemble.json']"
    bundle_run = [py, "-m", "monai.bundle", "run"]
    train_seconds = []
    for k in range(args.folds):
        if not (work / "models" / f"fold{k}" / "model.pt").is_file() or args.retrain:
            cmd = [*bundle_run, "training", "--config_file", train_cfg, *common, "--fold", str(k)]
            cmd += [
                "--num_folds",
                str(args.folds),
                "--epochs",
                str(args.epochs),
                "--val_interval",
                str(args.val_interval),
            ]
            train_seconds.append(run(cmd, BRATS, env, log))

    def evaluate(name: str, config: str, *extra: str) -> dict[str, float]:
        out = work / "eval" / name
        run(
            [*bundle_run, "evaluating", "--config_file", config, *common, *extra, "--output_dir", str(out)],
            BRATS,
            env,
            log,
        )
        return read_metrics(out)

    models = [str(work / "models" / f"fold{k}" / "model.pt") for k in range(args.folds)]
    single, tta, tta_axes = [], [], []
    for k in range(args.folds):
        single.append(evaluate(f"single_fold{k}", eval_cfg, "--fold", str(k), "--num_folds", str(args.folds)))
        one = ["--ckpt_paths", json.dumps([models[k]])]
        tta.append(evaluate(f"tta_fold{k}", ens_cfg, *one))
        tta_axes.append(evaluate(f"tta_axes_fold{k}", ens_cfg, *one, "--tta_flips", "axes"))
    ensemble = evaluate("ensemble", ens_cfg, "--tta", "false")
    ensemble_tta = evaluate("ensemble_tta", ens_cfg)
    ensemble_tta_axes = evaluate("ensemble_tta_axes", ens_cfg, "--tta_flips", "axes")
    cost = inference_cost(work, args.folds, args.val_roi_size, args.repeats)
    datalist = json.loads((work / "eval" / "fold0" / "datalist.json").read_text())
    fold_sizes = [len(json.loads((work / "eval" / f"fold{k}" / "datalist.json").read_text())["validation"])
                  for k in range(args.folds)]  # fmt: skip
    protocol = (
        f"ONE seed, small scale. Synthetic BraTS 2021 layout, {args.n_cases} cases of {'x'.join(map(str, args.size))} "
        f"voxels (scripts.synthetic seed 0); fixed test split of {len(datalist['testing'])} cases (split seed 12345, "
        f"70/15/15); the other {sum(fold_sizes)} cases in {args.folds} folds (validation parts {fold_sizes}). Each "
        f"fold: configs/train.json + configs/demo.json, {args.epochs} epochs, validation every {args.val_interval} "
        f"(best validation Dice kept), training seed 123, sliding window {args.val_roi_size}. fp32, 2 threads "
        "(BUNDLES_AMP=0 OMP_NUM_THREADS=2 PYTHONHASHSEED=0). Scores: evaluate.json's test metrics on the test split "
        "(test_dice/test_hd95: BraTS empty-case rule; *_nan: empty references excluded). single and tta: mean over "
        "the folds, each alone; ensemble: mean sigmoid probability of the folds; tta: mirroring along all 8 subsets "
        "of the 3 axes (variants: identity + 3 single-axis flips). Cost: inferer seconds per preprocessed test "
        "volume (fastest of the repeats, modes interleaved) relative to one model without TTA."
    )
    return {
        "single": {**rounded(mean_of(single)), "per_fold": [rounded(s) for s in single]},
        "tta": {**rounded(mean_of(tta)), "per_fold": [rounded(s) for s in tta]},
        "ensemble": rounded(ensemble),
        "ensemble_tta": rounded(ensemble_tta),
        "variants": {
            "tta_axes": {**rounded(mean_of(tta_axes)), "per_fold": [rounded(s) for s in tta_axes]},
            "ensemble_tta_axes": rounded(ensemble_tta_axes),
        },
        "cost": cost,
        "protocol": protocol,
        "training_seconds_per_fold": [round(s, 1) for s in train_seconds],
        "commands": log,
        "machine": machine_info(2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", default=str(ROOT / "work_dirs" / "ensemble" / "brats_segmentation"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ensemble.json"))
    p.add_argument("--n_cases", type=int, default=24)
    p.add_argument("--size", type=json.loads, default=[64, 64, 48])
    p.add_argument("--val_roi_size", type=json.loads, default=[64, 64, 48])
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--val_interval", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--retrain", action="store_true", help="train again even where models/fold{k}/model.pt exists")
    args = p.parse_args()
    result = {"brats_segmentation": brats(args)}
    write_json_atomic(result, args.out, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
