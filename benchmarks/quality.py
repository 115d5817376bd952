"""Quality benchmark: reproduce each bundle's committed numbers on its seeded synthetic set, or score real data.

    python -m benchmarks.quality                        # = make benchmark: synthetic, checked against expected.json
    python -m benchmarks.quality --bundles luna16_detection
    python -m benchmarks.quality --brats_dir /data/BraTS2021 --luna16_dir /data/LUNA16 --cxr14_dir /data/NIH

Synthetic protocol, per bundle, in fp32 (``BUNDLES_AMP=0``: bf16 autocast is chosen only on processors that have
it and would change the numbers between machines), 2 threads, ``PYTHONHASHSEED=0``:

1. ``make demo``'s steps (tools/demo.py with the bundle's ``configs/demo_spec.json``): generate the seeded
   synthetic set in the real layout, train, evaluate on the held-out test split, infer. The bundle's own
   evaluation gives the first metrics (``test_dice_TC``, ``mean_auroc``, ``cpm`` ...).
2. Output checks (``benchmarks/scoring.py``, code that shares nothing with the bundles): the bundle's inference
   command runs on the whole test split and its WRITTEN files are scored against the raw ground truth -
   BraTS segmentations per region in the edition's label values, for the 2021 test split and for a generated
   2023-layout set (``seg_*``, ``seg2023_*``); CXR14 probability CSVs by label name against
   ``Data_Entry_2017.csv`` and DICOM copies against their PNGs (``csv_*``, ``dicom_*``); the LUNA16
   submission CSV by the FROC rules against ``annotations.csv`` (``csv_*``).

A metric worse than ``expected - tolerance`` (``+`` for distances) in ``benchmarks/expected.json`` is a regression
and the exit status is 1; one better than its band is reported (the expected values are then stale).
``python -m benchmarks.planted`` plants known faults and checks that this benchmark catches each of them.

Real-data protocol (one or more ``--<bundle>_dir``): the bundle's default (model-zoo) configs on the real layout
(demo steps without ``configs/demo*.json``), our numbers beside the published ones (``benchmarks/published.json``).
This trains the full recipe: hours to days, on a GPU.

Published weights (``--weights published`` with ``--<bundle>_dir`` and ``--<bundle>_weights``, the publisher's file
as downloaded): nothing is trained. The file is imported with ``tools/import_weights.py`` (the source that runs in
that bundle) and scored by the bundle's documented evaluation of imported weights (``train.json`` + ``evaluate.json``
+ the source's override) on the bundle's test split of the real dataset, beside the published figures. What the
publisher trained on is printed under the table: a test split that overlaps it is not a test score.

Writes ``<work_dir>/quality.json`` and ``<work_dir>/quality.md``. With ``--update`` (synthetic protocol) also
``benchmarks/expected.json`` and, per bundle that ran to the end, its entry of ``benchmarks/results/quality.json``
(``benchmarks/quality_report.py``: metrics, the detail of the bundle's evaluation files, validation curve, seconds,
machine, command, date), which ``python -m benchmarks.quality_report --write`` renders into the bundles' docs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import quality_report, scoring
from benchmarks.speed.harness import machine_info
from common.files import atomic_write_text, write_json_atomic
from tools.demo import bundle_metrics, commands, discover, run_bundle, run_step, set_arg
from tools.weights.sources import SOURCES, Source

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = Path(__file__).with_name("expected.json")
PUBLISHED = Path(__file__).with_name("published.json")
REAL_DIR_OPTIONS = {
    "brats_segmentation": "brats_dir",
    "cxr14_classification": "cxr14_dir",
    "luna16_detection": "luna16_dir",
}
# the publisher's file of each bundle for --weights published
WEIGHTS_OPTIONS = {b: o.replace("_dir", "_weights") for b, o in REAL_DIR_OPTIONS.items()}
CXR14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
"""The NIH label names, written out here rather than imported: the scorer matches outputs to labels by name."""


def benchmark_env(threads: int = 2) -> dict[str, str]:
    """fp32 and a fixed thread count: both change the last bits of every convolution, which training amplifies."""
    env = {**os.environ, "BUNDLES_AMP": "0", "PYTHONHASHSEED": "0", "BUNDLES_PROGRESS": "0"}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def infer(bundle: Path, work: Path, dataset_dir: Path, output_dir: Path, env: dict, extra: dict | None) -> None:
    """The bundle's inference command (demo spec, plus any planted override) on ``dataset_dir``."""
    cmd = commands(bundle, work, extra=extra)["infer"]
    cmd = set_arg(set_arg(cmd, "--dataset_dir", str(dataset_dir)), "--output_dir", str(output_dir))
    shutil.rmtree(output_dir, ignore_errors=True)
    ok, _ = run_step(bundle, cmd, env)
    if not ok:
        raise RuntimeError(f"{bundle.name}: inference on {dataset_dir} failed")


def score_brats(bundle: Path, work: Path, env: dict, extra: dict | None = None) -> dict[str, float]:
    bench = work / "bench"
    test = json.loads((work / "eval" / "datalist.json").read_text())["testing"]
    cases = bench / "test_cases"
    shutil.rmtree(cases, ignore_errors=True)
    for item in test:
        shutil.copytree(Path(item["label"]).parent, cases / item["case"])
    infer(bundle, work, cases, bench / "pred2021", env, extra)
    pairs = [(bench / "pred2021" / f"{i['case']}_seg.nii.gz", Path(i["label"])) for i in test]
    out = {f"seg_{k}": v for k, v in scoring.score_brats_segmentations(pairs, "2021").items()}
    # the same model on a 2023-layout set: files, suffixes and label values of the other edition
    gli = bench / "BraTS2023"
    if not gli.is_dir():
        spec = json.loads((bundle / "configs" / "demo_spec.json").read_text())
        size = spec["generate"][spec["generate"].index("--size") + 1]
        cmd = [sys.executable, "-m", "scripts.synthetic", str(gli), "--n_cases", "6", "--layout", "2023"]
        if not run_step(bundle, [*cmd, "--size", size, "--seed", "2023"], env)[0]:
            raise RuntimeError("generating the 2023-layout set failed")
    infer(bundle, work, gli, bench / "pred2023", env, extra)
    pairs = [(bench / "pred2023" / f"{c.name}_seg.nii.gz", next(c.glob("*-seg.nii.gz"))) for c in sorted(gli.iterdir())]
    out.update({f"seg2023_{k}": v for k, v in scoring.score_brats_segmentations(pairs, "2023").items()})
    return out


def score_cxr14(bundle: Path, work: Path, env: dict, extra: dict | None = None) -> dict[str, float]:
    bench, data = work / "bench", work / "dataset"
    names = (data / "test_list.txt").read_text().split()
    png = bench / "test_png"
    shutil.rmtree(png, ignore_errors=True)
    png.mkdir(parents=True)
    for name in names:
        shutil.copy(next(data.glob(f"images*/images/{name}")), png / name)
    # DICOM copies of every test image (rescale+window, MONOCHROME1, 16-bit), written by the bundle's generator
    make = f"from pathlib import Path; from scripts.synthetic import write_dicom_copies; write_dicom_copies(Path({str(data)!r}), {names!r})"  # noqa: E501
    if not run_step(bundle, [sys.executable, "-c", make], env)[0]:
        raise RuntimeError("writing DICOM copies failed")
    infer(bundle, work, png, bench / "pred_png", env, extra)
    infer(bundle, work, data / "dicom", bench / "pred_dicom", env, extra)
    truth = scoring.read_nih_labels(data / "Data_Entry_2017.csv", CXR14_LABELS)
    from_png = scoring.read_probabilities(bench / "pred_png" / "predictions.csv")
    from_dicom = scoring.read_probabilities(bench / "pred_dicom" / "predictions.csv")
    if len(from_png) != len(names) or len(from_dicom) != len(names):
        raise RuntimeError(f"predictions for {len(from_png)} PNG / {len(from_dicom)} DICOM of {len(names)} images")
    out = {f"csv_{k}": v for k, v in scoring.score_cxr_probabilities(from_png, truth, CXR14_LABELS).items()}
    out["dicom_mean_auroc"] = scoring.score_cxr_probabilities(from_dicom, truth, CXR14_LABELS)["mean_auroc"]
    out["dicom_png_max_abs_diff"] = scoring.max_abs_difference(from_dicom, from_png)
    return out


def score_luna16(bundle: Path, work: Path, env: dict, extra: dict | None = None) -> dict[str, float]:
    data = work / "dataset"
    infer(bundle, work, data / "subset0", work / "bench" / "pred", env, extra)
    scans = sorted(m.stem for m in (data / "subset0").glob("*.mhd"))
    result = scoring.luna16_froc(
        scoring.read_submission(work / "bench" / "pred" / "submission.csv"),
        scoring.read_findings(data / "annotations.csv"),
        scoring.read_findings(data / "annotations_excluded.csv"),
        scans,
    )
    return {f"csv_{k}": v for k, v in result.items()}


SCORERS: dict[str, Callable[..., dict[str, float]]] = {
    "brats_segmentation": score_brats,
    "cxr14_classification": score_cxr14,
    "luna16_detection": score_luna16,
}


def run_synthetic(
    bundle: Path,
    work: Path,
    env: dict[str, str],
    steps: tuple[str, ...] = ("generate", "train", "evaluate", "infer"),
    extra: dict[str, list[str]] | None = None,
    dataset: Path | None = None,
) -> dict[str, Any]:
    """Demo steps, then the output checks; metrics of both in ``result["metrics"]``."""
    result = run_bundle(bundle, work, dataset=dataset, env=env, steps=steps, extra=extra)
    if result["ok"]:
        start = time.perf_counter()
        try:
            scores = SCORERS[bundle.name](bundle, work, env, extra)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            print(f"=== {bundle.name}: output checks failed: {e} ===", flush=True)
            return {**result, "ok": False, "failed_step": "output checks"}
        result["metrics"].update({k: round(v, 4) for k, v in scores.items()})
        result["seconds"]["output_checks"] = round(time.perf_counter() - start, 1)
    return result


def check(measured: dict[str, float], expected: dict[str, dict]) -> list[dict]:
    """One row per expected metric: measured value, allowed band and status (ok / REGRESSION / better / missing)."""
    rows = []
    for name, spec in expected.items():
        value, tol, better = spec["expected"], spec["tolerance"], spec.get("better", "higher")
        got = measured.get(name)
        if got is None or value is None:  # no expected value yet: measure with --update
            status = "missing"
        elif (got < value - tol) if better == "higher" else (got > value + tol):
            status = "REGRESSION"
        elif (got > value + tol) if better == "higher" else (got < value - tol):
            status = "better (update expected.json)"
        else:
            status = "ok"
        value = float("nan") if value is None else value
        rows.append(
            {"metric": name, "expected": value, "tolerance": tol, "better": better, "measured": got, "status": status}
        )
    return rows


def failed(result: dict[str, Any]) -> bool:
    return not result["ok"] or any(c["status"] in ("REGRESSION", "missing") for c in result.get("checks", []))


def synthetic_table(results: dict[str, dict]) -> str:
    lines = ["| bundle | metric | expected | tolerance | measured | status |", "|---|---|---|---|---|---|"]
    for bundle, res in results.items():
        if not res["ok"]:
            lines.append(f"| {bundle} | (failed at {res.get('failed_step')}) | | | | FAILED |")
            continue
        for r in res["checks"]:
            got = "-" if r["measured"] is None else f"{r['measured']:.4f}"
            sign = "-" if r["better"] == "higher" else "+"
            lines.append(
                f"| {bundle} | {r['metric']} | {r['expected']:.4f} | {sign}{r['tolerance']} | {got} | {r['status']} |"
            )
    return "\n".join(lines)


def real_table(results: dict[str, dict], published: dict[str, list[dict]]) -> str:
    lines = ["| bundle | system | metric | value | split / scoring | source |", "|---|---|---|---|---|---|"]
    notes = []
    for bundle, res in results.items():
        if not res["ok"]:
            lines.append(f"| {bundle} | (failed at {res.get('failed_step')}) | | | | FAILED |")
            continue
        ours = res.get("metrics", {})
        system = "this bundle"
        if "trained_on" in res:
            system = f"this bundle, {res['weights'].split(':')[0]} weights imported"
            notes.append(f"- {bundle}: the imported weights were trained on {res['trained_on']}")
        for m, v in ours.items():
            lines.append(f"| {bundle} | {system} | {m} | {v:.4f} | {res.get('data', '')[:90]} | measured |")
        for p in published.get(bundle, []):
            for m, v in p["metrics"].items():
                lines.append(f"| {bundle} | {p['system']} | {m} | {v} | {p['split']} | {p['source']} |")
    return "\n".join(lines + ([""] + notes if notes else []))


def weights_source(bundle: str) -> Source:
    """The publication whose weights run in ``bundle`` (tools/weights/sources.py)."""
    return next(s for s in SOURCES.values() if s.bundle == bundle)


def run_published(
    bundle: Path,
    work: Path,
    dataset: Path,
    publisher_file: Path,
    env: dict[str, str],
    variant: str | None = None,
    unsafe_unpickle: bool = False,
) -> dict[str, Any]:
    """Import the publisher's file with the documented command, then run the documented evaluation of imported
    weights on ``dataset``; the bundle's own metrics (``demo_spec.json``'s list) in ``result["metrics"]``."""
    work = work.resolve()
    source = weights_source(bundle.name)
    ckpt = work / "models" / "model.pt"
    result: dict[str, Any] = {"bundle": bundle.name, "work_dir": str(work), "ok": False, "seconds": {}}
    result.update(data=str(dataset), weights=f"{source.name}: {publisher_file}", trained_on=source.trained_on)
    print(f"\n=== {bundle.name}: published weights {publisher_file} on {dataset} ===", flush=True)
    cmd = [sys.executable, str(ROOT / "tools" / "import_weights.py"), source.name, str(publisher_file), str(ckpt)]
    cmd += (["--variant", variant] if variant else []) + (["--unsafe_unpickle"] if unsafe_unpickle else [])
    ok, result["seconds"]["import"] = run_step(bundle, cmd, env)
    if not ok:
        return {**result, "failed_step": "import"}
    configs = str(["configs/train.json", "configs/evaluate.json", f"configs/{source.override}"])
    cmd = set_arg(commands(bundle, work, dataset, reference=True)["evaluate"], "--config_file", configs)
    ok, result["seconds"]["evaluate"] = run_step(bundle, set_arg(cmd, "--ckpt_path", str(ckpt)), env)
    if not ok:
        return {**result, "failed_step": "evaluate"}
    result.update(ok=True, metrics=bundle_metrics(bundle, work))
    write_json_atomic(result, work / "results.json", indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="*", help="bundle names (default: every bundle in expected.json)")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "work_dirs" / "benchmark")
    parser.add_argument("--expected", type=Path, default=EXPECTED)
    parser.add_argument(
        "--update", action="store_true", help="write the measured values into --expected and the run into --results"
    )
    parser.add_argument("--results", type=Path, default=quality_report.RESULTS, help="results file the docs show")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS) unless already set")
    parser.add_argument("--train_seed", type=int, help="another training seed (to measure the seed spread)")
    for option in REAL_DIR_OPTIONS.values():
        parser.add_argument(f"--{option}", default="", help="dataset root in the real layout (real-data protocol)")
    parser.add_argument(
        "--weights",
        choices=("trained", "published"),
        default="trained",
        help="real data: train the default recipe, or score the publishers' weights (--<bundle>_weights)",
    )
    for bundle, option in WEIGHTS_OPTIONS.items():
        parser.add_argument(f"--{option}", default="", help=f"{weights_source(bundle).name}: the publisher's file")
    parser.add_argument("--xrv_variant", default=None, help="torchxrayvision variant when the file name lacks it")
    parser.add_argument(
        "--unsafe_unpickle",
        action="store_true",
        help="let the import unpickle whole pickled networks (torchxrayvision's files): runs code from the file",
    )
    args = parser.parse_args(argv)

    expected = json.loads(args.expected.read_text())
    real = {b: getattr(args, o) for b, o in REAL_DIR_OPTIONS.items() if getattr(args, o)}
    published_files = {b: getattr(args, o) for b, o in WEIGHTS_OPTIONS.items()}
    if args.weights == "published":
        if not real:
            parser.error("--weights published scores real data: give --brats_dir, --luna16_dir or --cxr14_dir")
        missing = [f"--{WEIGHTS_OPTIONS[b]}" for b in real if not published_files[b]]
        if missing:
            parser.error(f"--weights published needs the publisher's file: {', '.join(missing)}")
    names = args.bundles or (sorted(real) if real else sorted(expected["bundles"]))
    env = benchmark_env(args.threads)
    work = args.work_dir.resolve()
    info = {"machine": machine_info(int(env["OMP_NUM_THREADS"])), "command": " ".join(sys.argv), "results": {}}
    start = time.perf_counter()
    for bundle in discover(names):
        if real:
            if bundle.name in real and args.weights == "published":
                dataset, file = Path(real[bundle.name]).resolve(), Path(published_files[bundle.name]).resolve()
                variant = args.xrv_variant if bundle.name == "cxr14_classification" else None
                info["results"][bundle.name] = run_published(
                    bundle, work / f"{bundle.name}_published", dataset, file, env, variant, args.unsafe_unpickle
                )
            elif bundle.name in real:
                dataset = Path(real[bundle.name]).resolve()
                info["results"][bundle.name] = run_bundle(bundle, work / f"{bundle.name}_real", dataset, True, env)
            continue
        extra = {"train": ["--seed", str(args.train_seed)]} if args.train_seed is not None else None
        res = run_synthetic(bundle, work / bundle.name, env, extra=extra)
        res["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        res["checks"] = check(res.get("metrics", {}), expected["bundles"].get(bundle.name, {}))
        info["results"][bundle.name] = res
    info["seconds"] = round(time.perf_counter() - start, 1)

    if real:
        report = real_table(info["results"], json.loads(PUBLISHED.read_text()))
        title = "Real data: our numbers beside the published ones (benchmarks/published.json)"
        if args.weights == "published":
            title = "Real data, published weights imported (nothing trained), scored with this collection's metrics"
        bad = [b for b, r in info["results"].items() if not r["ok"]]
    else:
        report = synthetic_table(info["results"])
        title = f"Synthetic benchmark vs {args.expected.name} ({expected['protocol']})"
        bad = [b for b, r in info["results"].items() if failed(r)]
    m = info["machine"]
    header = (
        f"{title}\n\nCommand: `{info['command']}`; machine: {m['cpu_model']} ({m.get('cpu_id', '?')}, "
        f"AVX-512 {'yes' if m['bf16_flags'].get('avx512f') else 'no'}), {m['cpus']} cores, CUDA {m['cuda']}; "
        f"torch {m['torch']}, MONAI {m['monai']}; fp32 (BUNDLES_AMP=0), OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
        f"{info['seconds'] / 60:.1f} min.\n"
    )
    write_json_atomic(info, work / "quality.json", indent=2)
    atomic_write_text(f"{header}\n{report}\n", work / "quality.md")
    print(f"\n{header}\n{report}\n\nwrote {work / 'quality.md'}", flush=True)

    if args.update and not real:
        # read again: another run (of other bundles) may have updated the file while this one trained
        expected = json.loads(args.expected.read_text())
        for bundle, res in info["results"].items():
            for row in res.get("checks", []):
                if row["measured"] is not None:
                    expected["bundles"][bundle][row["metric"]]["expected"] = round(row["measured"], 4)
        expected["measured_on"] = (
            f"{m['cpu_model']} ({m.get('cpu_id', '?')}, AVX-512 {'yes' if m['bf16_flags'].get('avx512f') else 'no'}), "
            f"{m['cpus']} cores, torch {m['torch']}, {time.strftime('%Y-%m-%d')}"
        )
        atomic_write_text(json.dumps(expected, indent=4) + "\n", args.expected)
        print(f"updated {args.expected}")
        command = "python -m benchmarks.quality " + shlex.join(sys.argv[1:] if argv is None else argv)
        written = quality_report.record(info["results"], m, command.strip(), env, args.results)
        print(f"updated {args.results} ({', '.join(written) or 'no bundle ran to the end'})")
    if bad:
        print(f"benchmark FAILED for {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
