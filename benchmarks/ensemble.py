"""Folds, ensembles and test-time augmentation (TTA), measured on a seeded synthetic set (issue 19).

    python -m benchmarks.ensemble                                   # every bundle below
    python -m benchmarks.ensemble --bundles cxr14_classification    # one bundle; the others' results are kept
    python -m benchmarks.ensemble --work_dir work_dirs/ensemble --out benchmarks/results/ensemble.json

Each bundle works in ``<work_dir>/<bundle>`` and its results replace that bundle's entry in ``--out`` (the other
entries are kept). Every run is in fp32 with 2 threads (``benchmarks.quality.benchmark_env``).

BraTS protocol (``brats_segmentation``):

1. ``scripts.synthetic``: ``--n_cases`` cases in the 2021 layout of ``--size`` voxels, generator seed 0; the
   bundle's split (split seed 12345) fixes the test cases, the other cases make ``--folds`` folds.
2. Train every fold: ``configs/train.json`` + ``configs/demo.json`` with ``--fold k --num_folds K``, ``--epochs``
   epochs, validation every ``--val_interval`` epochs (the best validation Dice is ``models/fold{k}/model.pt``).
3. Score on the fixed test split with evaluate.json's official metrics (per-region Dice and HD95, BraTS and NaN
   empty-case rules): each fold alone (``evaluate.json --fold k``), each fold with TTA, the K-fold ensemble and the
   ensemble with TTA (``evaluate_ensemble.json``), with all 8 flips and with the identity + 3 single-axis flips.
4. Inference cost: the time of the inferer alone (sliding window, flips, networks; no file reading) on the
   preprocessed test volumes, the fastest of ``--repeats`` interleaved runs per mode, relative to one model without TTA.

CXR14 protocol (``cxr14_classification``):

1. ``scripts.synthetic``: ``--cxr_n_patients`` patients in the NIH layout, ``--cxr_size`` px PNGs, generator seed
   0; the generated official-style ``test_list.txt`` is the test set, the ``train_val_list.txt`` patients make
   ``--folds`` patient-level folds (split seed 0).
2. Train every fold: ``configs/train.json`` + ``configs/demo.json`` with ``--fold k --num_folds K``,
   ``--cxr_epochs`` epochs (the best validation mean AUROC is ``models/fold{k}/model.pt``).
3. Score on the test list with the bundle's evaluation (``metrics.json``: per-label AUROC and their mean): each
   fold alone (``evaluate.json --fold k``), each fold with the left-right flip TTA (``evaluate_ensemble.json
   --fold k --tta true``), the K-fold ensemble (``evaluate_ensemble.json``) and the ensemble with TTA.
4. Inference cost as for BraTS, per preprocessed test image in the inference batch size, measured in a child
   process (each bundle has its own ``scripts`` package).

LUNA16 protocol (``luna16_detection``, ``--bundles luna16_detection``; fp32, 2 threads):

1. ``scripts.synthetic``: a training root of ``--luna16_n_scans`` scans over subset0..9 (generator seed 0) and a
   held-out test root of ``--luna16_test_scans`` scans (seed 1, all in its subset0): no fold trains, validates or
   selects its model on a test scan, so single folds and ensembles are scored on the same held-out scans.
2. Train official folds 0..K-1 (``--luna16_folds``): ``configs/train.json`` + ``configs/demo.json`` with ``--fold k``
   (test subset k of the training root unused, validation subset k+1 selects ``models/fold{k}/model.pt``).
3. Every pass once: each test scan through each fold's network under each of the 8 mirror flips, with the bundle's
   ``scripts.ensemble.DetectionEnsembleInferer`` (one network, one flip per pass, each pass timed). Each mode fuses
   its passes with both fusions (``wbf``, ``nms``): single (fold k, identity pass, no fusion), TTA (fold k, 8 or 4
   flips), ensemble (K folds, identity), ensemble + TTA; then the configs' postprocessing (world mm) and the LUNA16
   FROC (``scripts.froc``, 1000 bootstrap resamples). Two modes are also run as the documented commands
   (``evaluate.json --fold 0``; ``evaluate_ensemble.json --tta false``): they must write the same detections
   ("cli_check").
4. Cost: the passes' seconds plus the fusion's per test scan (no file reading), relative to one model without TTA.

Writes ``{"luna16_detection": {"single", "tta", "ensemble", "ensemble_tta", "variants", "cost", "protocol", ...}}``
with CPM and sensitivities at 1/8..8 FP/scan; the top-level figures of a fused mode are those of the configs'
default fusion, each fusion's in "fusion". Results of the bundles run replace theirs in ``--out``; others are kept.

Seeds: every bundle runs once per training seed (``--seeds``, default 0 1 2; ``<work_dir>/<bundle>/seed<s>``, the
synthetic data and the splits shared by all seeds). A bundle's entry holds the mean of every figure over the seeds,
its sample standard deviation ("sd") and each seed's value ("per_seed"); each seed's full results, commands and
times are under "runs". Seeds run earlier with the same settings stay in the file and enter the mean, so
``--seeds 1`` adds a seed to a finished table; a run with other settings, or of another version of the bundle
(``metadata.json``: another twin or recipe), replaces them.

Writes ``{"<bundle>": {"seeds", "single", "tta", "ensemble", "ensemble_tta", "cost", "protocol", "runs", ...}}``
(BraTS and LUNA16 also "variants"). Within a seed, "single" and "tta" are the means over the K folds (each fold's
figures in that seed's "per_fold").
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.quality import CXR14_LABELS, benchmark_env
from benchmarks.speed.harness import machine_info
from common.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BRATS = ROOT / "bundles" / "brats_segmentation"
CXR14 = ROOT / "bundles" / "cxr14_classification"
LUNA16 = ROOT / "bundles" / "luna16_detection"
REGIONS = ("TC", "WT", "ET")
METRICS = ("test_dice", "test_hd95", "test_dice_nan", "test_hd95_nan")
# the same config layers in every bundle
TRAIN_CFG = "['configs/train.json','configs/demo.json']"
EVAL_CFG = "['configs/train.json','configs/evaluate.json','configs/demo.json']"
ENS_CFG = "['configs/train.json','configs/evaluate.json','configs/demo.json','configs/evaluate_ensemble.json']"
BUNDLE_RUN = [sys.executable, "-m", "monai.bundle", "run"]


def shown(cmd: list[str], cwd: Path | None = None) -> str:
    """A command as typed from ``cwd`` (a bundle directory by default): repository paths relative to it, config
    lists in "..."."""
    prefix = "" if cwd == ROOT else "../../"
    args = ["python", *(a.replace(f"{ROOT}/", prefix) for a in cmd[1:])]
    return " ".join(f'"{a}"' if "'" in a and '"' not in a else shlex.quote(a) for a in args)


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: list[dict[str, Any]]) -> float:
    """Run one command from ``cwd``; record it (as typed from there) and its wall time."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.append({"command": shown(cmd, cwd), "seconds": round(seconds, 1)})
    if result.returncode != 0:
        raise RuntimeError(
            f"failed ({result.returncode}): {shown(cmd, cwd)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    print(f"{seconds:7.1f} s  {shown(cmd, cwd)}", flush=True)
    return seconds


def train_folds(bundle: Path, work: Path, folds: range, fold_args: Callable[[int], list[str]], retrain: bool,
                env: dict[str, str], log: list[dict[str, Any]], config: str = TRAIN_CFG) -> list[float]:  # fmt: skip
    """``training`` of every fold ``k`` (arguments ``fold_args(k)``) whose ``models/fold{k}/model.pt`` is missing, or of
    all with ``retrain``; the seconds of each."""
    seconds = []
    for k in folds:
        if retrain or not (work / "models" / f"fold{k}" / "model.pt").is_file():
            cmd = [*BUNDLE_RUN, "training", "--config_file", config, *fold_args(k)]
            seconds.append(run(cmd, bundle, env, log))
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


def per_fold(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The mean over folds, each fold's figures in "per_fold"."""
    return {**rounded(mean_of(runs)), "per_fold": [rounded(r) for r in runs]}


def seed_result(modes: dict[str, Any], cost: dict[str, Any], protocol: str, train_seconds: list[float],
                log: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """One seed's results: the modes' scores, the cost, how they were obtained, and on what."""
    return {
        **modes,
        "cost": cost,
        "protocol": protocol,
        "training_seconds_per_fold": [round(s, 1) for s in train_seconds],
        "commands": log,
        "machine": machine_info(2),
    }


def time_modes(runners: dict[str, tuple[Callable[[Any], Any], int]], inputs: list[Any], repeats: int,
               unit: str = "volume", digits: int = 3) -> dict[str, Any]:  # fmt: skip
    """Seconds per input item of each mode (``runners``: mode -> (function of one batch, network passes)), the
    fastest of ``repeats`` runs; the modes are interleaved in every repeat so that load from other processes spreads
    over all of them. Costs are relative to the mode "single" (one model without TTA)."""
    import torch

    n_items = sum(len(x) for x in inputs)
    times: dict[str, list[float]] = {mode: [] for mode in runners}
    with torch.no_grad():
        for fn, _ in runners.values():
            fn(inputs[0])  # warm-up
        for _ in range(repeats):
            for mode, (fn, _) in runners.items():
                start = time.perf_counter()
                for x in inputs:
                    fn(x)
                times[mode].append((time.perf_counter() - start) / n_items)
    seconds = {mode: min(t) for mode, t in times.items()}  # the least disturbed run
    for mode, s in seconds.items():
        print(f"cost {mode}: {s:.3f} s per {unit} ({runners[mode][1]} passes)", flush=True)
    return {
        f"seconds_per_{unit}": {k: round(v, digits) for k, v in seconds.items()},
        "network_passes": {k: n for k, (_, n) in runners.items()},
        "multiplier": {k: round(v / seconds["single"], 2) for k, v in seconds.items()},
        f"{unit}s": n_items,
        "repeats": repeats,
    }


def in_process(bundle: Path) -> None:
    """Run ``bundle``'s code in this process as the benchmark measures it: fp32, 2 threads, and the bundle's own
    ``scripts`` package first on the path (another bundle's, imported earlier by this process, is forgotten)."""
    import torch

    os.environ["BUNDLES_AMP"] = "0"
    torch.set_num_threads(2)
    sys.path.insert(0, str(bundle))
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


def bundle_parser(bundle: Path, names: tuple[str, ...], **over: Any) -> Any:
    """A ConfigParser of ``bundle``'s configs ``names`` (layered in order) with ``over`` applied, imports done."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in names])
    parser.update(over)
    parser.get_parsed_content("imports")
    return parser


def cost_runners(parse: Callable[..., Any], model: str, modes: dict[str, dict[str, Any]]) -> tuple[dict, Any]:
    """``time_modes`` runners: inference.json's own inferer with one fold's weights ("plain inference.json") and
    the ensemble inferer of inference_ensemble.json under each mode's overrides; also the plain parser."""
    from common.checkpoint import load_weights

    plain = parse(("inference.json", "demo.json"))
    network = load_weights(plain.get_parsed_content("network"), model).eval()
    inferer = plain.get_parsed_content("inferer")
    runners = {"plain inference.json": (lambda x: inferer(x, network), 1)}
    for mode, over in modes.items():
        ensemble = parse(("inference.json", "demo.json", "inference_ensemble.json"), **over)
        ens = ensemble.get_parsed_content("ensemble_inferer")
        runners[mode] = (lambda x, ens=ens: ens(x, None), ens.passes())
    return runners, plain


def inference_cost(work: Path, dataset: Path, folds: int, roi: list[int], repeats: int) -> dict[str, Any]:
    """Seconds of the inferer per test volume for each mode (``time_modes``), in this process (2 threads, fp32)."""
    in_process(BRATS)
    from scripts.prepare import load_split

    def parse(names: tuple[str, ...], **over: Any) -> Any:
        over = {"engine": "torch", **over}  # timed in torch, as scored
        return bundle_parser(BRATS, names, bundle_root=str(work), dataset_dir=str(dataset), val_roi_size=roi, **over)

    models = [str(work / "models" / f"fold{k}" / "model.pt") for k in range(folds)]
    modes = {
        "single": (models[:1], False, "all"),
        "tta": (models[:1], True, "all"),
        "tta_axes": (models[:1], True, "axes"),
        "ensemble": (models, False, "all"),
        "ensemble_tta": (models, True, "all"),
        "ensemble_tta_axes": (models, True, "axes"),
    }
    overrides = {m: {"ckpt_paths": paths, "tta": tta, "tta_flips": flips} for m, (paths, tta, flips) in modes.items()}
    runners, plain = cost_runners(parse, models[0], overrides)
    preprocessing = plain.get_parsed_content("preprocessing")
    images = [preprocessing({"image": c["image"]})["image"][None] for c in load_split(dataset, "testing")]
    return time_modes(runners, images, repeats)


def brats_dataset(args: argparse.Namespace, env: dict[str, str], log: list[dict[str, Any]]) -> Path:
    """The BraTS benchmark's synthetic set, ``<work_dir>/brats_segmentation/dataset`` (generated once)."""
    dataset = Path(args.work_dir).resolve() / "brats_segmentation" / "dataset"
    if not dataset.is_dir():
        size = json.dumps(args.size, separators=(",", ":"))
        gen = ["-m", "scripts.synthetic", str(dataset), "--n_cases", str(args.n_cases), "--layout", "2021"]
        run([sys.executable, *gen, "--size", size, "--seed", "0"], BRATS, env, log)
    return dataset


def brats(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    env = benchmark_env()
    log: list[dict[str, Any]] = []
    dataset = brats_dataset(args, env, log)
    work = dataset.parent / f"seed{seed}"
    roi = json.dumps(args.val_roi_size, separators=(",", ":"))
    common = ["--dataset_dir", str(dataset), "--bundle_root", str(work), "--val_roi_size", roi]
    recipe = ["--num_folds", str(args.folds), "--epochs", str(args.epochs), "--seed", str(seed)]
    recipe += ["--val_interval", str(args.val_interval)]
    train_seconds = train_folds(BRATS, work, range(args.folds), lambda k: [*common, "--fold", str(k), *recipe],
                                args.retrain, env, log)  # fmt: skip

    def evaluate(name: str, config: str, *extra: str) -> dict[str, float]:
        out = work / "eval" / name
        engine = ["--engine", "torch"]  # every mode in torch fp32 (the CPU default engine is OpenVINO since 0.3.4)
        run(
            [*BUNDLE_RUN, "evaluating", "--config_file", config, *common, *extra, *engine, "--output_dir", str(out)],
            BRATS,
            env,
            log,
        )
        return read_metrics(out)

    models = [str(work / "models" / f"fold{k}" / "model.pt") for k in range(args.folds)]
    single, tta, tta_axes = [], [], []
    for k in range(args.folds):
        single.append(evaluate(f"single_fold{k}", EVAL_CFG, "--fold", str(k), "--num_folds", str(args.folds)))
        one = ["--ckpt_paths", json.dumps([models[k]])]
        tta.append(evaluate(f"tta_fold{k}", ENS_CFG, *one))
        tta_axes.append(evaluate(f"tta_axes_fold{k}", ENS_CFG, *one, "--tta_flips", "axes"))
    ensemble = evaluate("ensemble", ENS_CFG, "--tta", "false")
    ensemble_tta = evaluate("ensemble_tta", ENS_CFG)
    ensemble_tta_axes = evaluate("ensemble_tta_axes", ENS_CFG, "--tta_flips", "axes")
    cost = inference_cost(work, dataset, args.folds, args.val_roi_size, args.repeats)
    datalist = json.loads((work / "eval" / "fold0" / "datalist.json").read_text())
    fold_sizes = [len(json.loads((work / "eval" / f"fold{k}" / "datalist.json").read_text())["validation"])
                  for k in range(args.folds)]  # fmt: skip
    protocol = (
        f"Small scale. Synthetic BraTS 2021 layout, {args.n_cases} cases of {'x'.join(map(str, args.size))} "
        f"voxels (scripts.synthetic seed 0); fixed test split of {len(datalist['testing'])} cases (split seed 12345, "
        f"70/15/15); the other {sum(fold_sizes)} cases in {args.folds} folds (validation parts {fold_sizes}). Each "
        f"fold: configs/train.json + configs/demo.json, {args.epochs} epochs, validation every {args.val_interval} "
        f"(best validation Dice kept), training seed {seed}, sliding window {args.val_roi_size}. fp32, 2 threads "
        "(BUNDLES_AMP=0 OMP_NUM_THREADS=2 PYTHONHASHSEED=0). Scores: evaluate.json's test metrics on the test split "
        "(test_dice/test_hd95: BraTS empty-case rule; *_nan: empty references excluded). single and tta: mean over "
        "the folds, each alone; ensemble: mean sigmoid probability of the folds; tta: mirroring along all 8 subsets "
        "of the 3 axes (variants: identity + 3 single-axis flips). Cost: inferer seconds per preprocessed test "
        "volume (fastest of the repeats, modes interleaved) relative to one model without TTA."
    )
    modes = {
        "single": per_fold(single),
        "tta": per_fold(tta),
        "ensemble": rounded(ensemble),
        "ensemble_tta": rounded(ensemble_tta),
        "variants": {"tta_axes": per_fold(tta_axes), "ensemble_tta_axes": rounded(ensemble_tta_axes)},
    }
    return seed_result(modes, cost, protocol, train_seconds, log)


def read_cxr14_metrics(folder: Path) -> dict[str, float]:
    """``metrics.json`` of a CXR14 evaluation -> test mean AUROC and the AUROC of each label, by label name."""
    report = json.loads((folder / "metrics.json").read_text())
    per_label = {r["label"]: r["auroc"] for r in report["labels"]}
    if sorted(per_label) != sorted(CXR14_LABELS):
        raise ValueError(f"{folder / 'metrics.json'}: labels {sorted(per_label)}, expected the 14 NIH labels")
    return {"mean_auroc": report["summary"]["auroc"]} | {f"auroc_{n}": per_label[n] for n in CXR14_LABELS}


def cxr14_cost(work: Path, dataset: Path, folds: int, repeats: int) -> dict[str, Any]:
    """Seconds of the inferer per preprocessed test image for each mode (``time_modes``), in batches of the
    inference batch size, in this process (2 threads, fp32)."""
    import torch

    in_process(CXR14)
    from scripts.prepare import prepare_datalist

    def parse(names: tuple[str, ...], **over: Any) -> Any:
        return bundle_parser(CXR14, names, bundle_root=str(work), dataset_dir=str(dataset), **over)

    models = [str(work / "models" / f"fold{k}" / "model.pt") for k in range(folds)]
    modes = {
        "single": (models[:1], False),
        "tta": (models[:1], True),
        "ensemble": (models, False),
        "ensemble_tta": (models, True),
    }
    runners, plain = cost_runners(parse, models[0], {m: {"ckpt_paths": p, "tta": t} for m, (p, t) in modes.items()})
    preprocessing = plain.get_parsed_content("preprocessing")
    images = [preprocessing({"image": i["image"]})["image"] for i in prepare_datalist(dataset)["test"]]
    size = plain.get_parsed_content("batch_size")
    batches = [torch.stack(images[i : i + size]) for i in range(0, len(images), size)]
    return {**time_modes(runners, batches, repeats, unit="image", digits=5), "batch_size": size}


def cxr14_dataset(args: argparse.Namespace, env: dict[str, str], log: list[dict[str, Any]]) -> Path:
    """The CXR14 benchmark's synthetic set, ``<work_dir>/cxr14_classification/dataset`` (generated once)."""
    dataset = Path(args.work_dir).resolve() / "cxr14_classification" / "dataset"
    if not (dataset / "Data_Entry_2017.csv").is_file():
        gen = ["-m", "scripts.synthetic", str(dataset), "--n_patients", str(args.cxr_n_patients)]
        run([sys.executable, *gen, "--size", str(args.cxr_size), "--seed", "0", "--n_dicom", "0"], CXR14, env, log)
    return dataset


def cxr14(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    env = benchmark_env()
    py = sys.executable
    log: list[dict[str, Any]] = []
    dataset = cxr14_dataset(args, env, log)
    work = dataset.parent / f"seed{seed}"
    common = ["--dataset_dir", str(dataset), "--bundle_root", str(work), "--num_folds", str(args.folds)]
    recipe = ["--max_epochs", str(args.cxr_epochs), "--seed", str(seed)]
    train_seconds = train_folds(CXR14, work, range(args.folds), lambda k: [*common, "--fold", str(k), *recipe],
                                args.retrain, env, log)  # fmt: skip

    def evaluate(name: str, config: str, *extra: str) -> dict[str, float]:
        out = work / "eval" / name
        cmd = [*BUNDLE_RUN, "evaluating", "--config_file", config, *common, *extra, "--output_dir", str(out)]
        run(cmd, CXR14, env, log)
        return read_cxr14_metrics(out)

    single = [evaluate(f"single_fold{k}", EVAL_CFG, "--fold", str(k)) for k in range(args.folds)]
    tta = [evaluate(f"tta_fold{k}", ENS_CFG, "--fold", str(k), "--tta", "true") for k in range(args.folds)]
    ensemble = evaluate("ensemble", ENS_CFG, "--tta", "false")
    ensemble_tta = evaluate("ensemble_tta", ENS_CFG, "--tta", "true")
    # the cost is timed in a child process: this one may hold the BraTS bundle's `scripts` package
    cost_file = work / "eval" / "cost.json"
    child = ["-m", "benchmarks.ensemble", "--cost_child", str(work), str(dataset), "--folds", str(args.folds)]
    run([py, *child, "--repeats", str(args.repeats), "--out", str(cost_file)], ROOT, env, log)
    cost = json.loads(cost_file.read_text())

    folds = [json.loads((work / "data" / f"fold{k}" / "datalist.json").read_text()) for k in range(args.folds)]
    val_patients = [len({i["patient"] for i in f["validation"]}) for f in folds]
    val_images = [len(f["validation"]) for f in folds]
    test = folds[0]["test"]
    protocol = (
        f"Small scale. Synthetic NIH ChestX-ray14 layout, {args.cxr_n_patients} patients, "
        f"{args.cxr_size} px PNGs (scripts.synthetic seed 0); test set: the generated official-style test_list.txt, "
        f"{len(test)} images of {len({i['patient'] for i in test})} patients; the train_val_list.txt patients in "
        f"{args.folds} patient-level folds (split seed 0; validation parts of {val_patients} patients, {val_images} "
        f"images). Each fold: configs/train.json + configs/demo.json (small DenseNet, 96 px), {args.cxr_epochs} "
        f"epochs, best validation mean AUROC kept, training seed {seed}. fp32, 2 threads (BUNDLES_AMP=0 "
        "OMP_NUM_THREADS=2 PYTHONHASHSEED=0). Scores: the bundle's evaluation on the test list (metrics.json: AUROC"
        " per label and their mean over labels with positives). single: evaluate.json --fold k; tta: "
        "evaluate_ensemble.json --fold k --tta true (mean of the image and its left-right mirror); ensemble: "
        "evaluate_ensemble.json (mean sigmoid probability of the folds); ensemble_tta: the same with the mirror. "
        "single and tta: mean over the folds, each alone. Cost: inferer seconds per preprocessed test image, in "
        "batches of the inference batch size (fastest of the repeats, modes interleaved), relative to one model "
        "without TTA."
    )
    modes = {"single": per_fold(single), "tta": per_fold(tta), "ensemble": rounded(ensemble)}
    return seed_result(modes | {"ensemble_tta": rounded(ensemble_tta)}, cost, protocol, train_seconds, log)


def luna16_scores(detections: dict[str, list[list[float]]], data: list[dict[str, Any]]) -> dict[str, Any]:
    """CPM and sensitivities at the 7 FP rates (LUNA16 rules, ``scripts.froc``) with the CPM's bootstrap CI."""
    from scripts.froc import evaluate_froc

    nodules = {i["seriesuid"]: i["nodules"] for i in data}
    excluded = {i["seriesuid"]: i["excluded"] for i in data}
    r = evaluate_froc(detections, nodules, excluded, sorted(nodules), n_bootstrap=1000)
    out = {"cpm": r["cpm"]} | {f"sensitivity@{rate}fp": v for rate, v in r["sensitivity_at_fp_rates"].items()}
    return out | {"cpm_ci95": [round(v, 4) for v in r.get("bootstrap", {}).get("cpm_ci95", [])]}


def luna16_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores of one run, or the mean of several (one per fold) with each in "per_fold"."""
    rounded = [{k: v if k == "cpm_ci95" else round(v, 4) for k, v in r.items()} for r in runs]
    if len(runs) == 1:
        return rounded[0]
    mean = {k: round(statistics.fmean(r[k] for r in runs), 4) for k in runs[0] if k != "cpm_ci95"}
    return {**mean, "per_fold": rounded}


def luna16_passes(work: Path, test_root: Path, folds: int) -> tuple[list[dict[str, Any]], Any, Any]:
    """Every test scan through every fold's network under each of the 8 mirror flips, once, in this process (fp32,
    2 threads): ``[{"item", "image", "passes": {(k, flips): prediction}, "seconds": {(k, flips): s}}]``, plus a
    ``DetectionEnsembleInferer`` to fuse them (its ``fusion`` set per mode) and the configs' postprocessing."""
    import torch

    in_process(LUNA16)
    from common.ensemble import load_networks, mirror_flips
    from scripts.ensemble import DetectionEnsembleInferer

    parser = bundle_parser(
        LUNA16,
        ("train.json", "evaluate.json", "demo.json"),
        bundle_root=str(work),
        dataset_dir=str(test_root),
        eval_subsets=[0],
        use_amp=False,
    )
    parser.get_parsed_content("detector_ops")
    inferer, device = parser.get_parsed_content("validate#inferer"), parser.get_parsed_content("device")
    paths = [str(work / "models" / f"fold{k}" / "model.pt") for k in range(folds)]
    networks = load_networks(parser.get_parsed_content("network_def"), paths, device)
    one_pass = {(k, f): DetectionEnsembleInferer(inferer, [networks[k]], flips=[f])
                for k in range(folds) for f in mirror_flips("all")}  # fmt: skip
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    items = parser.get_parsed_content("validate#dataset#data")
    scans = []
    with torch.no_grad():
        for n, item in enumerate(items, start=1):
            image = preprocessing(item)["image"].to(device)
            scan: dict[str, Any] = {"item": item, "image": image, "passes": {}, "seconds": {}}
            for key, ens in one_pass.items():
                start = time.perf_counter()
                scan["passes"][key] = ens.pass_predictions(image)[0]
                scan["seconds"][key] = time.perf_counter() - start
            scans.append(scan)
            print(f"passes: {n}/{len(items)} test scans", flush=True)
    return scans, DetectionEnsembleInferer(inferer), parser.get_parsed_content("validate#postprocessing")


def luna16(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    root = (Path(args.work_dir) / "luna16_detection").resolve()
    work = root / f"seed{seed}"
    env = benchmark_env()
    py = sys.executable
    log: list[dict[str, Any]] = []
    dataset, test_root = root / "dataset", root / "test_dataset"
    size = [str(v) for v in args.luna16_size]
    # generator seeds 0 and 1 (data), not the training seed
    for out, n, data_seed, subsets in (
        (dataset, args.luna16_n_scans, 0, 10),
        (test_root, args.luna16_test_scans, 1, 1),
    ):
        if not out.is_dir():
            gen = ["-m", "scripts.synthetic", "--out_dir", str(out), "--n_scans", str(n), "--size", *size]
            run([py, *gen, "--n_subsets", str(subsets), "--seed", str(data_seed)], LUNA16, env, log)
    recipe = ["--epochs", str(args.luna16_epochs), "--seed", str(seed), "--val_interval", str(args.luna16_val_interval)]
    train_seconds = train_folds(
        LUNA16,
        work,
        range(args.luna16_folds),
        lambda k: ["--dataset_dir", str(dataset), "--bundle_root", str(work), "--fold", str(k), *recipe],
        args.retrain,
        env,
        log,
    )

    scans, fuser, postprocessing = luna16_passes(work, test_root, args.luna16_folds)
    from common.ensemble import mirror_flips
    from scripts.ensemble import FUSIONS
    from scripts.handlers import detections_of

    folds, all_flips, axes_flips = range(args.luna16_folds), mirror_flips("all"), mirror_flips("axes")
    data = [s["item"] for s in scans]
    default_fusion = json.loads((LUNA16 / "configs" / "evaluate_ensemble.json").read_text())["fusion"]
    seconds: dict[str, list[float]] = {}
    passes: dict[str, int] = {}
    kept: dict[tuple[str, int], dict[str, list[list[float]]]] = {}  # (name, first fold) -> detections

    def score(name: str, keys: list[tuple[int, tuple[int, ...]]], fusion: str | None) -> dict[str, Any]:
        """One run: the passes ``keys`` of every scan, fused (``None``: the one pass as it is), to world mm by the
        configs' postprocessing, scored; its seconds per scan (passes + fusion) are added to ``seconds[name]``."""
        detections = {}
        for s in scans:
            start = time.perf_counter()
            if fusion:
                fuser.fusion = fusion
                pred = fuser.fuse([s["passes"][key] for key in keys])
            else:
                pred = s["passes"][keys[0]]
            fuse_seconds = time.perf_counter() - start
            post = postprocessing({**pred, "image": s["image"]})
            uid = s["item"]["seriesuid"]
            detections[uid] = detections_of({"pred_box": post["box"], "pred_score": post["label_scores"]})
            seconds.setdefault(name, []).append(sum(s["seconds"][key] for key in keys) + fuse_seconds)
        passes[name] = len(keys)
        kept[(name, keys[0][0])] = detections
        return luna16_scores(detections, data)

    def fused(name: str, runs: list[list[tuple[int, tuple[int, ...]]]]) -> dict[str, Any]:
        """A fused mode, each run (one per fold, or the ensemble's one) with both fusions; the top level holds the
        configs' default fusion."""
        by_fusion = {f: luna16_summary([score(f"{name}_{f}", keys, f) for keys in runs]) for f in FUSIONS}
        return {**by_fusion[default_fusion], "fusion": by_fusion}

    single_runs = [score("single", [(k, ())], None) for k in folds]
    result: dict[str, Any] = {
        "single": luna16_summary(single_runs),
        "tta": fused("tta", [[(k, f) for f in all_flips] for k in folds]),
        "ensemble": fused("ensemble", [[(k, ()) for k in folds]]),
        "ensemble_tta": fused("ensemble_tta", [[(k, f) for k in folds for f in all_flips]]),
        "variants": {
            "tta_axes": fused("tta_axes", [[(k, f) for f in axes_flips] for k in folds]),
            "ensemble_tta_axes": fused("ensemble_tta_axes", [[(k, f) for k in folds for f in axes_flips]]),
        },
    }
    per_scan = {name: statistics.fmean(t) for name, t in seconds.items()}  # over scans (and folds)
    cost = {
        "seconds_per_scan": {k: round(v, 3) for k, v in per_scan.items()},
        "network_passes": passes,
        "multiplier": {k: round(v / per_scan["single"], 2) for k, v in per_scan.items()},
        "scans": len(scans),
    }

    # the documented commands, for two of the modes: they must write the detections computed here
    from scripts.froc import read_predictions

    common = ["--dataset_dir", str(test_root), "--eval_subsets", "[0]", "--bundle_root", str(work)]
    paths = json.dumps([str(work / "models" / f"fold{k}" / "model.pt") for k in folds])
    checks = {}
    for name, cmd, ours in (
        ("single_fold0", [EVAL_CFG, "--fold", "0"], kept[("single", 0)]),
        ("ensemble", [ENS_CFG, "--tta", "false", "--ckpt_paths", paths], kept[(f"ensemble_{default_fusion}", 0)]),
    ):
        out = work / "eval" / f"cli_{name}"
        run([*BUNDLE_RUN, "evaluating", "--config_file", *cmd, *common, "--output_dir", str(out)], LUNA16, env, log)
        cli = read_predictions(out / "predictions.csv")  # 3 decimals in mm, 6 for the probability
        rows = [(a, b) for uid in ours for a, b in zip(ours[uid], cli.get(uid, []))]
        same_count = all(len(ours[uid]) == len(cli.get(uid, [])) for uid in ours) and set(cli) <= set(ours)
        mm = max((abs(x - y) for a, b in rows for x, y in zip(a[:3], b[:3])), default=0.0)
        prob = max((abs(a[3] - b[3]) for a, b in rows), default=0.0)
        checks[name] = {
            "detections": len(rows),
            "same_count": same_count,
            "max_abs_diff_mm": round(mm, 6),
            "max_abs_diff_probability": round(prob, 8),
            "agree": same_count and mm < 6e-4 and prob < 6e-7,
        }
        if not checks[name]["agree"]:
            print(f"WARNING: {name}: the documented command's predictions differ: {checks[name]}", flush=True)
    n_nodules = sum(len(i["nodules"]) for i in data)
    protocol = (
        f"Small scale. Synthetic LUNA16 layout, {'x'.join(size)} voxels: training root of "
        f"{args.luna16_n_scans} scans over subset0..9 (scripts.synthetic seed 0), held-out test root of {len(scans)} "
        f"scans with {n_nodules} nodules (seed 1; no fold saw them). Official folds 0..{len(folds) - 1}: "
        f"configs/train.json + configs/demo.json --fold k, {args.luna16_epochs} epochs, validation on subset k+1 "
        f"every {args.luna16_val_interval} (best CPM kept), training seed {seed}. fp32, 2 threads (BUNDLES_AMP=0 "
        "OMP_NUM_THREADS=2 PYTHONHASHSEED=0). Every (fold, flip) pass run once per test scan in-process through "
        "scripts.ensemble.DetectionEnsembleInferer; each mode fuses its passes with both fusions (wbf: weighted box "
        "fusion, nms: NMS over the union; both at the detector's NMS IoU 0.22, 300 boxes); top-level figures use the "
        f"configs' default fusion ({default_fusion}). single and tta: mean over the folds, each alone; tta: all 8 "
        "mirror flips (variants: identity + 3 single-axis flips). LUNA16 FROC (scripts.froc): CPM = mean sensitivity "
        "at 1/8..8 FP/scan, cpm_ci95 = 1000 bootstrap resamples of scans (single runs only). Cost: seconds of the "
        "passes plus the fusion per test scan (no file reading), relative to one model without TTA. cli_check: the "
        "documented evaluate commands for two modes write the same detections (to the CSV's 3 decimals in mm)."
    )
    modes = {
        **result,
        "fusion_default": default_fusion,
        "fusion_better_on_ensemble_tta": max(FUSIONS, key=lambda f: result["ensemble_tta"]["fusion"][f]["cpm"]),
        "cli_check": checks,
    }
    return seed_result(modes, cost, protocol, train_seconds, log)


def numeric(d: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def across_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of every figure in ``runs`` (one dict per seed, nested dicts such as LUNA16's "fusion" or
    the cost's "multiplier" alike), its sample standard deviation ("sd") and each seed's figures ("per_seed")."""
    figures = numeric(runs[0])
    out: dict[str, Any] = {k: round(statistics.fmean(r[k] for r in runs), 4) for k in figures}
    for k, v in runs[0].items():
        if isinstance(v, dict):
            out[k] = across_seeds([r[k] for r in runs])
    if figures and len(runs) > 1:
        out["sd"] = {k: round(statistics.stdev(r[k] for r in runs), 4) for k in figures}
    if figures:
        out["per_seed"] = [{k: r[k] for k in figures} for r in runs]
    return out


# the arguments that change a bundle's figures: runs of different settings are not averaged together
SETTINGS = {
    "brats_segmentation": ("folds", "n_cases", "size", "val_roi_size", "epochs", "val_interval"),
    "cxr14_classification": ("folds", "cxr_n_patients", "cxr_size", "cxr_epochs"),
    "luna16_detection": ("luna16_n_scans", "luna16_test_scans", "luna16_size", "luna16_folds", "luna16_epochs",
                         "luna16_val_interval"),
}  # fmt: skip


def run_settings(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """What a bundle's figures depend on: its ``SETTINGS`` arguments and the bundle's version (a new version may
    bring another synthetic twin or recipe, whose runs must not be averaged with the old ones)."""
    metadata = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
    return {k: getattr(args, k) for k in SETTINGS[name]} | {"bundle_version": metadata["version"]}


def summary(name: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A bundle's entry in the results file: every mode averaged over the seeds in ``runs`` (seed -> one run's
    results), the runs themselves under "runs"."""
    seeds = sorted(runs, key=int)
    ordered = [runs[s] for s in seeds]
    modes = ("single", "tta", "ensemble", "ensemble_tta", "variants")
    entry: dict[str, Any] = {"seeds": [int(s) for s in seeds]}
    entry |= {m: across_seeds([r[m] for r in ordered]) for m in modes if m in ordered[0]}
    # timings disturbed while they ran (a run marked "cost_invalid" with the reason) leave the cost figures; the
    # scores of that run stay (they do not depend on time)
    timed = [s for s in seeds if not runs[s].get("cost_invalid")]
    entry["cost"] = across_seeds([runs[s]["cost"] for s in timed]) if timed else {}
    if len(timed) < len(seeds):
        entry["cost_seeds"] = [int(s) for s in timed]
        entry["cost_excluded"] = {s: runs[s]["cost_invalid"] for s in seeds if runs[s].get("cost_invalid")}
    if name == "luna16_detection":
        fusions = entry["ensemble_tta"]["fusion"]
        entry["fusion_default"] = ordered[0]["fusion_default"]
        entry["fusion_better_on_ensemble_tta"] = max(fusions, key=lambda f: fusions[f]["cpm"])
        entry["cli_check_agree"] = all(c["agree"] for r in ordered for c in r["cli_check"].values())
    first = ordered[0]["protocol"].replace(f"training seed {seeds[0]}", "the training seed")
    entry["protocol"] = (
        f"Mean over {len(seeds)} training seed(s) {entry['seeds']}: the data, the splits and the folds are the same "
        "for every seed, each seed trains every fold again; 'sd' is the sample standard deviation over the seeds, "
        "'per_seed' each seed's figures in the order of 'seeds' (every command of each seed under 'runs'). " + first
    )
    entry["runs"] = {s: runs[s] for s in seeds}
    entry["machine"] = ordered[-1]["machine"]
    return entry


BENCHMARKS: dict[str, Callable[[argparse.Namespace, int], dict[str, Any]]] = {
    "brats_segmentation": brats,
    "cxr14_classification": cxr14,
    "luna16_detection": luna16,
}


def build_parser(description: str | None = __doc__) -> argparse.ArgumentParser:
    """The benchmark's options (also ``benchmarks.networks``'s: same data, folds and recipes)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", nargs="+", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS))
    p.add_argument(
        "--work_dir", default=str(ROOT / "work_dirs" / "ensemble"), help="each bundle in <work_dir>/<bundle>"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ensemble.json"))
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--retrain", action="store_true", help="train again even where models/fold{k}/model.pt exists")
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="training seeds (<work_dir>/<bundle>/seed<s>); runs of other seeds with the same settings already in "
        "--out are kept and averaged with these",
    )
    brats_args = p.add_argument_group("brats_segmentation")
    brats_args.add_argument("--n_cases", type=int, default=24)
    brats_args.add_argument("--size", type=json.loads, default=[64, 64, 48])
    brats_args.add_argument("--val_roi_size", type=json.loads, default=[64, 64, 48])
    brats_args.add_argument("--epochs", type=int, default=6)
    brats_args.add_argument("--val_interval", type=int, default=3)
    cxr_args = p.add_argument_group("cxr14_classification")
    cxr_args.add_argument("--cxr_n_patients", type=int, default=260)
    cxr_args.add_argument("--cxr_size", type=int, default=256)
    cxr_args.add_argument("--cxr_epochs", type=int, default=16)
    luna_args = p.add_argument_group("luna16_detection")
    luna_args.add_argument("--luna16_n_scans", type=int, default=150, help="training root, over subset0..9")
    luna_args.add_argument("--luna16_test_scans", type=int, default=30, help="held-out test root")
    luna_args.add_argument("--luna16_size", type=json.loads, default=[96, 96, 48], help="voxels of each scan")
    luna_args.add_argument("--luna16_folds", type=int, default=3, help="official folds 0..K-1 trained and ensembled")
    luna_args.add_argument("--luna16_epochs", type=int, default=18, help="configs/demo.json's recipe")
    luna_args.add_argument("--luna16_val_interval", type=int, default=3)
    return p


def main() -> None:
    p = build_parser()
    p.add_argument("--cost_child", nargs=2, default=None, help=argparse.SUPPRESS)  # internal: CXR14 cost (work, data)
    args = p.parse_args()
    if args.cost_child:
        work, dataset = map(Path, args.cost_child)
        write_json_atomic(cxr14_cost(work, dataset, args.folds, args.repeats), args.out, indent=2)
        return
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.bundles:
        settings = run_settings(args, name)
        runs = result.get(name, {}).get("runs", {})
        if any(r.get("settings") != settings for r in runs.values()):
            print(f"{name}: the runs in {out} have other settings than {settings}: replaced", flush=True)
            runs = {}
        for seed in args.seeds:
            print(f"== {name}, training seed {seed}", flush=True)
            runs[str(seed)] = {**BENCHMARKS[name](args, seed), "settings": settings}
            result[name] = summary(name, runs)
            write_json_atomic(result, out, indent=2)  # after each seed: a later failure keeps the finished ones
    print(f"wrote {args.out}")
    luna = result.get("luna16_detection") if "luna16_detection" in args.bundles else None
    if luna and not luna["cli_check_agree"]:
        sys.exit(
            "luna16_detection: the documented evaluate commands wrote other detections than the benchmark (cli_check)"
        )


if __name__ == "__main__":
    main()
