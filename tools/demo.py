"""Run every bundle's demo end to end on its synthetic data and print one results table.

Each bundle provides ``scripts/demo.py``, run from the bundle directory as
``python -m scripts.demo --work_dir DIR``: it generates a synthetic dataset in the real on-disk layout, runs
the bundle's documented ``python -m monai.bundle run ...`` commands (train, evaluate, infer) and writes
``DIR/results.json``. Each demo runs in its own process because every bundle has a package named ``scripts``.

Usage: python tools/demo.py [--bundles name ...] [--work_dir work_dirs/demo]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def discover(names: list[str] | None) -> list[Path]:
    bundles = sorted(p.parent.parent for p in (ROOT / "bundles").glob("*/scripts/demo.py"))
    if names:
        known = {b.name: b for b in bundles}
        missing = [n for n in names if n not in known]
        if missing:
            sys.exit(f"unknown bundle(s) {missing}; bundles with a demo: {sorted(known)}")
        bundles = [known[n] for n in names]
    return bundles


def run_demo(bundle: Path, work_dir: Path, args: list[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """Run ``python -m scripts.demo --work_dir DIR [args]`` from the bundle directory; its results.json + status."""
    work_dir.mkdir(parents=True, exist_ok=True)
    results = work_dir / "results.json"
    results.unlink(missing_ok=True)
    print(f"\n=== {bundle.name}: demo in {work_dir} ===", flush=True)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "scripts.demo", "--work_dir", str(work_dir), *(args or [])]
    proc = subprocess.run(cmd, cwd=bundle, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not results.is_file():
        return {"bundle": bundle.name, "ok": False, "seconds": seconds, "metrics": {}}
    data = json.loads(results.read_text())
    return {**data, "bundle": bundle.name, "ok": True, "seconds": seconds}


def table(rows: list[dict]) -> str:
    lines = ["| bundle | status | wall time | metrics |", "|---|---|---|---|"]
    for row in rows:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in row.get("metrics", {}).items())
        status = "ok" if row["ok"] else "FAILED"
        lines.append(f"| {row['bundle']} | {status} | {row['seconds'] / 60:.1f} min | {metrics} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="*", help="bundle directory names (default: every bundle with a demo)")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "work_dirs" / "demo")
    args = parser.parse_args()
    bundles = discover(args.bundles)
    if not bundles:
        print("no bundle with scripts/demo.py found under bundles/")
        return 1
    rows = [run_demo(b, args.work_dir.resolve() / b.name) for b in bundles]
    report = table(rows)
    print("\nResults (synthetic data, this machine; see each bundle's docs/README.md for the protocol)\n")
    print(report)
    (args.work_dir / "results.md").write_text(report + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
