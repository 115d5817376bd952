"""Quality benchmark: reproduce each bundle's committed numbers on its seeded synthetic set, or score real data.

    python benchmarks/quality.py                       # = make benchmark: synthetic, checked against expected.json
    python benchmarks/quality.py --bundles luna16_detection
    python benchmarks/quality.py --brats_dir /data/BraTS2021 --luna16_dir /data/LUNA16 --cxr14_dir /data/NIH

Synthetic protocol: each bundle's ``scripts/demo.py`` (generate the seeded synthetic set in the real on-disk
layout, train with ``configs/demo.json``, evaluate on the held-out test split) in fp32 (``BUNDLES_AMP=0``: bf16
autocast is picked only on CPUs/GPUs that have it, and would change the numbers between machines). The checked
metrics and their tolerances are in ``benchmarks/expected.json``; a metric worse than ``expected - tolerance``
(``+`` for distances) is a regression and the exit status is 1. A metric better than the tolerance band is
reported too: the expected values are then stale.

Real-data protocol (one or more ``--<bundle>_dir``): the same demo script with ``--dataset_dir DIR --reference``,
i.e. the bundle's default (model-zoo) configs on the real layout: the documented seeded split, training,
evaluation; the table puts our numbers beside the published ones (``benchmarks/published.json``) with each
one's split and scoring convention. This trains the full recipe: hours to days, on a GPU.

Writes ``<work_dir>/quality.json`` and ``<work_dir>/quality.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "benchmarks" / "speed")]

from demo import discover, run_demo  # noqa: E402  (tools/demo.py: runs one bundle's scripts/demo.py)
from harness import machine_info  # noqa: E402  (CPU model, bf16 flags, versions: shared with the speed scripts)

from common.files import atomic_write_text, write_json_atomic  # noqa: E402

EXPECTED = Path(__file__).with_name("expected.json")
PUBLISHED = Path(__file__).with_name("published.json")
REAL_DIR_OPTIONS = {
    "brats_segmentation": "brats_dir",
    "cxr14_classification": "cxr14_dir",
    "luna16_detection": "luna16_dir",
}


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


def synthetic_table(results: dict[str, dict]) -> str:
    lines = ["| bundle | metric | expected | tolerance | measured | status |", "|---|---|---|---|---|---|"]
    for bundle, res in results.items():
        if not res["ok"]:
            lines.append(f"| {bundle} | (demo failed) | | | | FAILED |")
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
    for bundle, res in results.items():
        ours = res.get("metrics", {})
        names = sorted({m for p in published.get(bundle, []) for m in p["metrics"]})
        for m in names:
            if m in ours:
                lines.append(
                    f"| {bundle} | this bundle | {m} | {ours[m]:.4f} | {res.get('notes', '')[:90]} | measured |"
                )
        for p in published.get(bundle, []):
            for m, v in p["metrics"].items():
                lines.append(f"| {bundle} | {p['system']} | {m} | {v} | {p['split']} | {p['source']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="*", help="bundle names (default: every bundle in expected.json)")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "work_dirs" / "benchmark")
    parser.add_argument("--expected", type=Path, default=EXPECTED)
    parser.add_argument("--update", action="store_true", help="write the measured values into --expected")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS) unless already set")
    for option in REAL_DIR_OPTIONS.values():
        parser.add_argument(f"--{option}", default="", help="dataset root in the real layout (real-data protocol)")
    args = parser.parse_args()

    expected = json.loads(args.expected.read_text())
    real = {b: getattr(args, o) for b, o in REAL_DIR_OPTIONS.items() if getattr(args, o)}
    names = args.bundles or (sorted(real) if real else sorted(expected["bundles"]))
    # fp32 everywhere and a fixed thread count: both change the last bits of every convolution, which training amplifies
    env = {**os.environ, "BUNDLES_AMP": "0", "PYTHONHASHSEED": "0"}
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = args.work_dir.resolve()
    info = {
        "machine": machine_info(int(env["OMP_NUM_THREADS"])),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": {},
    }
    start = time.perf_counter()
    for bundle in discover(names):
        if real:
            if bundle.name not in real:
                continue
            extra = ["--dataset_dir", str(Path(real[bundle.name]).resolve()), "--reference"]
            res = run_demo(bundle, work / f"{bundle.name}_real", extra, env)
        else:
            res = run_demo(bundle, work / bundle.name, [], env)
            res["checks"] = check(res.get("metrics", {}), expected["bundles"].get(bundle.name, {}))
        info["results"][bundle.name] = res
    info["seconds"] = round(time.perf_counter() - start, 1)

    if real:
        report = real_table(info["results"], json.loads(PUBLISHED.read_text()))
        title = "Real data: our numbers beside the published ones (REFERENCE.md section 3)"
        failed = [b for b, r in info["results"].items() if not r["ok"]]
    else:
        report = synthetic_table(info["results"])
        title = f"Synthetic benchmark vs {args.expected.name} ({expected['protocol']})"
        failed = [
            b
            for b, r in info["results"].items()
            if not r["ok"] or any(c["status"] in ("REGRESSION", "missing") for c in r["checks"])
        ]
    m = info["machine"]
    header = (
        f"{title}\n\nCommand: `{info['command']}`; machine: {m['cpu_model']}, {m['cpus']} cores, CUDA {m['cuda']}; "
        f"torch {m['torch']}, MONAI {m['monai']}; fp32 (BUNDLES_AMP=0), OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
        f"{info['seconds'] / 60:.1f} min.\n"
    )
    write_json_atomic(info, work / "quality.json", indent=2)
    atomic_write_text(f"{header}\n{report}\n", work / "quality.md")
    print(f"\n{header}\n{report}\n\nwrote {work / 'quality.md'}", flush=True)

    if args.update and not real:
        for bundle, res in info["results"].items():
            for row in res.get("checks", []):
                if row["measured"] is not None:
                    expected["bundles"][bundle][row["metric"]]["expected"] = round(row["measured"], 4)
        expected["measured_on"] = (
            f"{m['cpu_model']}, {m['cpus']} cores, torch {m['torch']}, {time.strftime('%Y-%m-%d')}"
        )
        atomic_write_text(json.dumps(expected, indent=4) + "\n", args.expected)
        print(f"updated {args.expected}")
    if failed:
        print(f"benchmark FAILED for {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
