"""The quality benchmark's committed results file, ``benchmarks/results/quality.json``, and the docs blocks rendered
from it (issue 14).

``python -m benchmarks.quality --update`` records here, per bundle that ran to the end, what the bundle's docs show:
the metrics it measured (the bundle's own evaluation and the output checks), the detail of the bundle's evaluation
read from the run's own files (BraTS per region under both empty-case rules and lesion-wise, ``eval/metrics.csv``;
CXR14 per label, ``eval/metrics.json``; LUNA16 FROC sensitivities, CPM bootstrap interval, COCO figures,
``eval/froc.json``), the validation scores training logged (its TensorBoard events), seconds per step, machine,
command, environment, date and commit. A run of some bundles replaces only their entries.

Each bundle's entry, with the bands ``benchmarks/expected.json`` allows, is rendered between
``<!-- quality:begin -->`` and ``<!-- quality:end -->`` in its docs/README.md (the markers must be there):

    python -m benchmarks.quality_report            # print the blocks
    python -m benchmarks.quality_report --write    # update the READMEs
    python -m benchmarks.quality_report --check    # exit 1 when a README differs from what the results give
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.speed.harness import markdown_table
from benchmarks.speed.report import blocks_cli, blocks_parser, replace_block, stale_blocks
from common.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
EXPECTED = ROOT / "benchmarks" / "expected.json"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
REGIONS = ("TC", "WT", "ET")
VALIDATION = {
    "brats_segmentation": ("val_dice", *(f"val_dice_{r}" for r in REGIONS)),
    "cxr14_classification": ("val_mean_auroc",),
    "luna16_detection": ("val_cpm",),
}
"""The validation scores each bundle's training logs (TensorBoard tags): the first is the curve, the others are shown
at its last epoch."""
RATES = {"0.125": "1/8", "0.25": "1/4", "0.5": "1/2"}

# ------------------------------------------------------------------------------------- what a run leaves in files


def _finite(value: Any) -> Any:
    """``value`` with every float rounded to 4 decimals and NaN / inf as None (the file stays strict JSON)."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _saved_metrics(path: Path) -> dict[str, float]:
    """The ``name,value`` rows of a MONAI ``MetricsSaver`` file."""
    return {row[0]: float(row[1]) for row in csv.reader(path.read_text().splitlines()) if len(row) == 2}


def brats_detail(work: Path) -> dict[str, Any]:
    """Every figure of ``eval/metrics.csv`` (per region and mean: Dice and HD95 under the BraTS and the NaN
    empty-case rule, lesion-wise 2023 Dice and HD95), the test case count, and per region the cases the NaN rule
    scores (those whose reference holds the region: ``notnans`` of ``test_dice_nan_summary.csv``)."""
    out = work / "eval"
    summary = list(csv.DictReader((out / "test_dice_nan_summary.csv").read_text().splitlines()))
    scored = {region: int(float(row["notnans"])) for region, row in zip(REGIONS, summary)}
    cases = len(json.loads((out / "datalist.json").read_text())["testing"])
    return {"test": _saved_metrics(out / "metrics.csv"), "n_test_cases": cases, "nan_rule_cases": scored}


def cxr14_detail(work: Path) -> dict[str, Any]:
    """``eval/metrics.json``: the summary and, per label, test AUROC, sensitivity, specificity, positives, negatives."""
    report = json.loads((work / "eval" / "metrics.json").read_text())
    keys = ("label", "auroc", "sensitivity", "specificity", "n_positive", "n_negative")
    return {"summary": report["summary"], "labels": [{k: label[k] for k in keys} for label in report["labels"]]}


def luna16_detail(work: Path) -> dict[str, Any]:
    """``eval/froc.json`` without its curve: CPM, sensitivities at the 7 rates, counts, bootstrap intervals, COCO."""
    froc = json.loads((work / "eval" / "froc.json").read_text())
    return {k: v for k, v in froc.items() if k != "curve"}


DETAILS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "brats_segmentation": brats_detail,
    "cxr14_classification": cxr14_detail,
    "luna16_detection": luna16_detail,
}


def validation_curve(work: Path, tags: tuple[str, ...]) -> dict[str, list[float]]:
    """``{"epochs": [...], tag: [...], ...}`` from the newest TensorBoard events file in ``work/eval`` (or
    ``eval/tb``) that holds ``tags[0]`` (a rerun in the same folder adds newer files); empty without one. The
    evaluator logs at the trainer's epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = [*(work / "eval").glob("events.out.tfevents.*"), *(work / "eval" / "tb").glob("events.out.tfevents.*")]
    for path in sorted(files, key=lambda p: int(p.name.split(".")[3]), reverse=True):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        logged = events.Tags()["scalars"]
        if tags[0] in logged:
            steps = [s.step for s in events.Scalars(tags[0])]
            curve: dict[str, list[float]] = {"epochs": steps}
            for tag in (t for t in tags if t in logged):
                by_step = {s.step: s.value for s in events.Scalars(tag)}
                curve[tag] = [by_step.get(step, math.nan) for step in steps]
            return curve
    return {}


def commit() -> str:
    """The checked-out commit, and whether tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" with uncommitted changes" if dirty else "")


def record(
    results: dict[str, dict[str, Any]], machine: dict[str, Any], command: str, env: dict[str, str], path: Path = RESULTS
) -> list[str]:
    """Write into ``path`` an entry for each bundle of ``results`` (``benchmarks.quality``'s per-bundle results)
    that ran to the end, read from its work folder; the file's other entries are kept. The bundles written."""
    data = json.loads(path.read_text()) if path.is_file() else {"bundles": {}}
    data["description"] = (
        "python -m benchmarks.quality --update: per bundle, the last run's metrics (the bundle's own evaluation and "
        "the output checks), the detail of its evaluation files, the validation scores of training (epochs and "
        "values), seconds per step, machine, environment, command, date and commit. Rendered into the bundles' "
        "docs by python -m benchmarks.quality_report --write; bands in benchmarks/expected.json."
    )
    done = []
    for bundle, res in results.items():
        if not res.get("ok"):
            continue
        work = Path(res["work_dir"])
        data["bundles"][bundle] = {
            "command": command,
            "finished_utc": res.get("finished_utc"),
            "commit": commit(),
            "machine": machine,
            "env": {k: env.get(k) for k in ("BUNDLES_AMP", "OMP_NUM_THREADS", "PYTHONHASHSEED")},
            "data": res.get("data"),
            "seconds": res.get("seconds", {}),
            "metrics": res.get("metrics", {}),
            "detail": DETAILS[bundle](work),
            "validation": validation_curve(work, VALIDATION[bundle]),
        }
        done.append(bundle)
    data["bundles"] = dict(sorted(data["bundles"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(_finite(data), path, indent=1)
    return done


# ------------------------------------------------------------------------------------------------ the docs blocks


def _f(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def checks_table(metrics: dict[str, float], expected: dict[str, dict[str, Any]]) -> str:
    """Each metric of the bundle's ``expected.json`` entry: measured, expected, and where the run would fail."""
    rows = []
    for name, spec in expected.items():
        value, tol = spec["expected"], spec["tolerance"]
        fails = f"< {value - tol:.4f}" if spec.get("better", "higher") == "higher" else f"> {value + tol:.4f}"
        rows.append([f"`{name}`", _f(metrics.get(name), 4), f"{value:.4f}", fails])
    return markdown_table(["metric", "measured", "expected", "fails when"], rows)


def validation_lines(entry: dict[str, Any], decimals: int) -> list[str]:
    """The validation curve of training in one line, the other logged scores at its last epoch."""
    curve = dict(entry.get("validation") or {})
    if not curve:
        return []
    epochs = curve.pop("epochs")
    (main, values), *others = curve.items()
    line = (
        f"- validation during training (`{main}`) at epochs {' / '.join(str(e) for e in epochs)}: "
        f"{' / '.join(_f(v, decimals) for v in values)}"
    )
    if others:
        last = ", ".join(f"{tag.rsplit('_', 1)[1]} {_f(v[-1], decimals)}" for tag, v in others)
        line += f"; at epoch {epochs[-1]}: {last}"
    return [line]


def brats_lines(entry: dict[str, Any]) -> list[str]:
    detail = entry["detail"]
    test, scored = detail["test"], detail["nan_rule_cases"]
    scored_text = "; cases scored: " + ", ".join(f"{r} {n}" for r, n in scored.items())
    rows = [
        ("Dice, BraTS rule", "test_dice", "", 3),
        ("Dice, NaN rule", "test_dice_nan", scored_text, 3),
        ("HD95 mm, BraTS rule", "test_hd95", "", 1),
        ("HD95 mm, NaN rule", "test_hd95_nan", "", 1),
        ("lesion-wise Dice, 2023 rule", "test_lesion_dice", "", 3),
        ("lesion-wise HD95 mm, 2023 rule", "test_lesion_hd95", "", 1),
    ]
    table = [
        [f"{label} (`{key}`{note})", *(_f(test.get(f"{key}_{r}"), d) for r in REGIONS), _f(test.get(key), d)]
        for label, key, note, d in rows
        if key in test
    ]
    header = [f"test split ({detail['n_test_cases']} cases), `eval/metrics.csv`", *REGIONS, "mean"]
    return [markdown_table(header, table), "", *validation_lines(entry, 3)]


def cxr14_lines(entry: dict[str, Any]) -> list[str]:
    summary, labels = entry["detail"]["summary"], entry["detail"]["labels"]
    table = [
        [x["label"], _f(x["auroc"], 3), _f(x["sensitivity"], 3), _f(x["specificity"], 3),
         f"{x['n_positive']} / {x['n_negative']}"]
        for x in labels
    ]  # fmt: skip
    table.append(
        ["**mean**", f"**{_f(summary['auroc'], 3)}**", _f(summary["sensitivity"], 3), _f(summary["specificity"], 3), ""]
    )
    header = [f"label ({summary['n_test_images']} test images, `eval/metrics.json`)", "test AUROC", "sensitivity",
              "specificity", "positives / negatives"]  # fmt: skip
    return [
        markdown_table(header, table),
        "",
        f"- thresholds for sensitivity and specificity: `{summary['threshold_rule']}` "
        f"({summary['n_val_images']} validation images)",
        *validation_lines(entry, 3),
    ]


def luna16_lines(entry: dict[str, Any]) -> list[str]:
    d = entry["detail"]
    rates = sorted(d["sensitivity_at_fp_rates"], key=float)
    cpm = f"**{_f(d['cpm'], 3)}**"
    if d.get("bootstrap", {}).get("cpm_ci95"):
        lo, hi = d["bootstrap"]["cpm_ci95"]
        cpm += f" (95% bootstrap interval over scans {lo:.3f}-{hi:.3f}, {d['bootstrap']['n']} resamples)"
    table = [
        [
            f"sensitivity at {', '.join(RATES.get(r, f'{float(r):g}') for r in rates)} FP/scan",
            ", ".join(_f(d["sensitivity_at_fp_rates"][r], 3) for r in rates),
        ],
        ["**CPM**", cpm],
    ]
    coco = d.get("coco", {})
    if "mAP_IoU_0.10_0.50_0.05_MaxDet_100" in coco:
        table.append(
            [
                "COCO mAP / mAR, IoU 0.1-0.5 (world-mm boxes, not a LUNA16 score)",
                f"{coco['mAP_IoU_0.10_0.50_0.05_MaxDet_100']:.3f} / {coco['mAR_IoU_0.10_0.50_0.05_MaxDet_100']:.3f}",
            ]
        )
    table.append(
        [
            "nodules detected at any score / false positives",
            f"{d['n_detected_nodules']} of {d['n_nodules']} / {d['n_false_positives']} ({d['n_scans']} scans)",
        ]
    )
    header = [f"test scans ({d['n_scans']}, {d['n_nodules']} nodules), `eval/froc.json`", "value"]
    return [markdown_table(header, table), "", *validation_lines(entry, 2)]


LINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "brats_segmentation": brats_lines,
    "cxr14_classification": cxr14_lines,
    "luna16_detection": luna16_lines,
}


def machine(m: dict[str, Any]) -> str:
    vm = f"{m['hypervisor']} VM" if m.get("hypervisor") else "bare metal"
    avx512 = "yes" if m.get("bf16_flags", {}).get("avx512f") else "no"
    load = m.get("load_average_at_start")
    return (
        f"{m['cpu_model']} ({m['cpu_id']}, AVX-512 {avx512}), {m['cpus']} CPUs ({vm}), CUDA {m['cuda']}; torch "
        f"{m['torch']}, MONAI {m['monai']}" + (f"; load average at the start {load[0]:.1f}" if load else "")
    )


def section(bundle: str, entry: dict[str, Any], expected: dict[str, dict[str, Any]]) -> str:
    """The README block of one bundle's entry in quality.json, with its bands from expected.json."""
    env = entry["env"]
    precision = "fp32" if env.get("BUNDLES_AMP") == "0" else "the bundle's automatic precision"
    settings = " ".join(f"{k}={v}" for k, v in env.items() if v is not None)
    steps = ", ".join(f"{step.replace('_', ' ')} {s:.0f}" for step, s in entry["seconds"].items())
    lines = [
        BEGIN,
        "<!-- generated by `python -m benchmarks.quality_report --write` from benchmarks/results/quality.json and "
        "benchmarks/expected.json; tests/test_docs_numbers.py checks that they agree -->",
        f"**Measured** by `{entry['command']}` (repository root): `make demo`'s steps for this bundle "
        "(`tools/demo.py` with `configs/demo_spec.json`: generate, train, evaluate on the held-out test split, infer), "
        f"then the output checks of `benchmarks/scoring.py` on the written files; {precision}, `{settings}`. Data: "
        f"{entry['data']}. Raw figures: [`benchmarks/results/quality.json`](../../../benchmarks/results/quality.json)"
        f", key `{bundle}`.",
        "",
        "What the benchmark checks (a figure past its limit fails `make benchmark`; expected values and tolerances: "
        "[`benchmarks/expected.json`](../../../benchmarks/expected.json)):",
        "",
        checks_table(entry["metrics"], expected),
        "",
        *LINES[bundle](entry),
        f"- wall time per step, seconds: {steps}",
        f"- machine: {machine(entry['machine'])}",
        f"- finished {entry['finished_utc']}, commit {entry['commit']}",
        END,
    ]
    return "\n".join(lines)


def updated(bundle: str, entry: dict[str, Any], expected: dict[str, Any], doc: str) -> str:
    """``doc`` (a bundle's README) with its quality block rendered (ValueError without the markers)."""
    return replace_block(doc, section(bundle, entry, expected["bundles"][bundle]), BEGIN, END, before=None)


def stale(results: dict[str, Any], expected: dict[str, Any], docs: dict[str, str] | None = None) -> dict[str, str]:
    """Bundle -> what is wrong, for every bundle of ``results`` whose README (``docs[bundle]``, else the file) lacks
    the block or holds another one than the results give (a unified diff, README block vs rendered)."""
    return stale_blocks(blocks(results, expected), BEGIN, END, docs)


def blocks(results: dict[str, Any], expected: dict[str, Any]) -> dict[str, str]:
    """Bundle -> its rendered block."""
    return {b: section(b, entry, expected["bundles"][b]) for b, entry in results["bundles"].items()}


def main() -> None:
    p = blocks_parser(__doc__.split("\n\n")[0], RESULTS)
    p.add_argument("--expected", default=str(EXPECTED))
    a = p.parse_args()
    results, expected = json.loads(Path(a.results).read_text()), json.loads(Path(a.expected).read_text())
    blocks_cli(blocks(results, expected), BEGIN, END, a, "benchmarks.quality_report")


if __name__ == "__main__":
    main()
