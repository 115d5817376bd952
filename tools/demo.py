"""`make demo`: every bundle end to end on its synthetic data (or on a real dataset), one results table.

    python tools/demo.py [--bundles name ...] [--work_dir work_dirs/demo]
    python tools/demo.py --bundles brats_segmentation --dataset_dir /data/BraTS2021 --reference

One driver for all bundles. What a bundle runs is data, in ``bundles/<name>/configs/demo_spec.json``: the
generator command and the bundle's own documented commands (``python -m monai.bundle run training|evaluating|run``
with the CPU-sized ``configs/demo*.json`` overrides), each run as a subprocess from the bundle directory (every
bundle has a package named ``scripts``). The layout of one bundle's demo, ``<work_dir>/<bundle>/``:

    dataset/     the generated data, in the real dataset's layout
    models/      trained weights (models/model.pt is the selected checkpoint)
    eval/        datalist, evaluation metrics, TensorBoard events
    inference/   what the inference command wrote
    results.json the metrics named in the spec, step timings and paths

``--reference`` drops the ``configs/demo*.json`` overrides (the full model-zoo recipe, for real data on a GPU).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.files import atomic_write_text, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
STEPS = ("generate", "train", "evaluate", "infer")


def discover(names: list[str] | None = None) -> list[Path]:
    """Bundles with a demo spec (all of them), or the named ones; unknown names end the program with a message."""
    bundles = sorted(p.parents[1] for p in BUNDLES.glob("*/configs/demo_spec.json"))
    if names:
        known = {b.name: b for b in bundles}
        missing = [n for n in names if n not in known]
        if missing:
            sys.exit(f"unknown bundle(s) {missing}; bundles with a demo: {sorted(known)}")
        bundles = [known[n] for n in names]
    return bundles


def load_spec(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "configs" / "demo_spec.json").read_text())


def without_demo_overrides(args: list[str]) -> list[str]:
    """The ``--config_file`` lists with every ``configs/demo*.json`` removed (the bundle's default recipe)."""
    out = []
    for arg in args:
        if arg.startswith("[") and "configs/" in arg:
            files = [f for f in ast.literal_eval(arg) if not Path(f).name.startswith("demo")]
            arg = str(files) if len(files) > 1 else files[0]
        out.append(arg)
    return out


def commands(
    bundle: Path,
    work: Path,
    dataset: Path | None = None,
    reference: bool = False,
    extra: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """The command of each step for ``bundle``, run in ``work`` (``dataset``: a real root instead of generating).

    ``extra`` appends arguments to a step (e.g. ``{"infer": ["--dataset_dir", ...]}``; later ones win in MONAI).
    """
    spec = load_spec(bundle)
    data = dataset or work / "dataset"
    fill = {"{dataset}": str(data), "{work}": str(work)}

    def expand(args: list[str]) -> list[str]:
        out = []
        for a in args:
            for k, v in fill.items():
                a = a.replace(k, v)
            out.append(a)
        return out

    bundle_run = [sys.executable, "-m", "monai.bundle", "run"]
    common = ["--bundle_root", str(work)]
    cmds = {
        "train": bundle_run + expand(spec["train"]) + ["--dataset_dir", str(data), *common],
        "evaluate": bundle_run + expand(spec["evaluate"]) + ["--dataset_dir", str(data), *common],
        "infer": bundle_run + expand(spec["infer"]) + [*common, "--output_dir", str(work / "inference")],
    }
    if reference:
        cmds = {k: without_demo_overrides(v) for k, v in cmds.items()}
    if dataset is None:
        cmds = {"generate": [sys.executable, *expand(spec["generate"])], **cmds}
    for step, args in (extra or {}).items():
        cmds[step] = cmds[step] + list(args)
    return cmds


def bundle_env(bundle: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The bundle's repository root on PYTHONPATH (its ``common``), for a process started in the bundle directory."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(bundle.resolve().parents[1]), env.get("PYTHONPATH", "")) if p)
    return env


def set_arg(cmd: list[str], flag: str, value: str) -> list[str]:
    """``cmd`` with ``flag``'s value replaced (or the pair appended when ``flag`` is absent)."""
    cmd = list(cmd)
    if flag in cmd:
        cmd[cmd.index(flag) + 1] = value
        return cmd
    return [*cmd, flag, value]


def run_step(bundle: Path, cmd: list[str], env: dict[str, str] | None = None) -> tuple[bool, float]:
    """Run one command from the bundle directory, echoing it; (success, seconds)."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=bundle, env=bundle_env(bundle, env))
    return proc.returncode == 0, round(time.perf_counter() - start, 1)


def read_metric(work: Path, path: list[str]) -> float | None:
    """A value from a results file: ``[file.json, key, key, ...]`` or ``[metrics.csv, name]`` (the ``name,value``
    rows of MONAI's ``MetricsSaver``); None when it is not there."""
    file, *keys = path
    try:
        text = (work / file).read_text()
        if file.endswith(".csv"):
            rows = {row[0]: row[1] for row in csv.reader(text.splitlines()) if len(row) == 2}
            return float(rows[keys[0]])
        value: Any = json.loads(text)
        for k in keys:
            value = value[k]
        return float(value)
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return None


def bundle_metrics(bundle: Path, work: Path) -> dict[str, float]:
    """The figures ``configs/demo_spec.json`` lists, read from the run's files in ``work`` (4 decimals; those not
    there are left out)."""
    values = {name: read_metric(work, path) for name, path in load_spec(bundle)["metrics"].items()}
    return {k: round(v, 4) for k, v in values.items() if v is not None}


def run_bundle(
    bundle: Path,
    work: Path,
    dataset: Path | None = None,
    reference: bool = False,
    env: dict[str, str] | None = None,
    steps: tuple[str, ...] = STEPS,
    extra: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Run the demo steps of one bundle in ``work``; returns (and writes ``work/results.json``) its metrics."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").unlink(missing_ok=True)
    spec = load_spec(bundle)
    print(f"\n=== {bundle.name}: demo in {work} ===", flush=True)
    seconds: dict[str, float] = {}
    result: dict[str, Any] = {"bundle": bundle.name, "work_dir": str(work), "ok": False}
    for step, cmd in commands(bundle, work, dataset, reference, extra).items():
        if step not in steps:
            continue
        ok, seconds[step] = run_step(bundle, cmd, env)
        if not ok:
            print(f"=== {bundle.name}: step '{step}' failed ===", flush=True)
            return {**result, "failed_step": step, "seconds": seconds}
    result.update(
        ok=True,
        metrics=bundle_metrics(bundle, work),
        seconds=seconds,
        data=str(dataset) if dataset else spec["data"],
        configs="default recipe" if reference else "demo overrides (configs/demo*.json)",
        weights=str(work / "models" / "model.pt"),
        outputs=str(work / "inference"),
        commands=reuse_commands(bundle, work),
    )
    write_json_atomic(result, work / "results.json", indent=2)
    return result


def reuse_commands(bundle: Path, work: Path) -> list[str]:
    """The documented evaluate, inference and export commands (from the repository root) that take this
    demo's weights: the same configs plus ``configs/demo.json`` (the demo network's size) and
    ``--bundle_root <work>`` (where ``models/model.pt`` is)."""
    spec = load_spec(bundle)
    root = os.path.relpath(work.resolve(), bundle.resolve())
    data = os.path.relpath((work / "dataset").resolve(), bundle.resolve())

    def show(args: list[str]) -> str:
        args = args[1:] if args[0] == "run" else args  # "run" is the default run id
        args = [a.replace("{dataset}", data).replace("{work}", root) for a in args]
        return " ".join(f'"{a}"' if a.startswith("[") else a for a in args)

    infer_configs = spec["infer"][spec["infer"].index("--config_file") + 1]
    return [
        f"cd {bundle.resolve().relative_to(ROOT)}",
        f"python -m monai.bundle run {show(spec['evaluate'])} --dataset_dir {data} --bundle_root {root}",
        f"python -m monai.bundle run {show(spec['infer'])} --bundle_root {root} --output_dir {root}/inference",
        f"python -m monai.bundle ckpt_export network_def --filepath {root}/models/model.ts "
        f"--ckpt_file {root}/models/model.pt --key_in_ckpt model --meta_file configs/metadata.json "
        f'--config_file "{infer_configs}" --bundle_root {root}',
    ]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| bundle | status | wall time | metrics | weights and outputs |", "|---|---|---|---|---|"]
    for row in rows:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in row.get("metrics", {}).items())
        status = "ok" if row["ok"] else f"FAILED at {row.get('failed_step')}"
        minutes = sum(row.get("seconds", {}).values()) / 60
        where = f"`{row['work_dir']}`" + (" (models/, eval/, inference/)" if row["ok"] else "")
        lines.append(f"| {row['bundle']} | {status} | {minutes:.1f} min | {metrics} | {where} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="*", help="bundle directory names (default: all)")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "work_dirs" / "demo")
    parser.add_argument("--dataset_dir", type=Path, help="a real dataset root (with one --bundles name)")
    parser.add_argument("--reference", action="store_true", help="the bundles' default recipes, no demo overrides")
    args = parser.parse_args()
    bundles = discover(args.bundles)
    if args.dataset_dir and len(bundles) != 1:
        parser.error("--dataset_dir needs exactly one --bundles name")
    dataset = args.dataset_dir.resolve() if args.dataset_dir else None
    rows = [run_bundle(b, args.work_dir / b.name, dataset, args.reference) for b in bundles]
    report = table(rows)
    for row in rows:
        if row["ok"] and "commands" in row:
            report += f"\n\n{row['bundle']}: the documented commands with this demo's weights\n\n"
            report += "\n".join(f"    {c}" for c in row["commands"])
    print("\nResults (synthetic data unless --dataset_dir; see each bundle's docs/README.md for the protocol)\n")
    print(report)
    atomic_write_text(report + "\n", args.work_dir / "results.md")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
