"""LUNA16 at the real size, end to end: one synthetic chest CT of real LUNA16 size through our whole inference and
through the model-zoo reference, each in a fresh process: wall time, peak memory and the agreement of the boxes.

The scan: 512x512x300 voxels at 0.7x0.7x1.0 mm (a 300 mm long chest CT as LUNA16 holds them), written as
MetaImage by the bundle's synthetic generator (3 nodules, seed 0), about 510x510x240 after resampling to
0.703125x0.703125x1.25 mm. Weights: seeded random initialisation of the network, with the classification layer
redrawn as in ``benchmarks.speed.luna16`` so that boxes score above the 0.02 threshold and can be compared.

- ours: ``configs/inference.json`` as shipped (bf16 autocast and channels-last where the CPU has native bf16,
  the CPU sliding window 512x512x64; ``val_patch_size``), file reading and writing included, data loading in the
  main process (``num_workers 0``) so that one process holds all the memory;
- reference: the model zoo's pipeline (``benchmarks.speed.luna16.ReferenceInference``): fp32, window 512x512x192.

    .venv/bin/python -m benchmarks.speed.luna16_fullsize --work_dir work_dirs/luna16_fullsize \\
        --out benchmarks/results/luna16_fullsize.json

A side whose peak memory would not fit is not started: ``--min_free_gb`` (default 14) of available memory is
required before the reference runs (measured at ~10 GB for its window alone, ``benchmarks/speed/luna16_window``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.speed import harness

BUNDLE = "luna16_detection"
SIZE = (512, 512, 300)
SPACING_MM = (0.7, 0.7, 1.0)
REFERENCE_WINDOW = [512, 512, 192]


def available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def make_scan(work: Path, size: tuple[int, int, int], spacing: tuple[float, float, float]) -> dict[str, Any]:
    """One scan in the LUNA16 layout (``data/subset0/<uid>.mhd``) and its datalist item."""
    import numpy as np

    from scripts import synthetic

    folder = work / "data" / "subset0"
    uid = f"{synthetic.UID_PREFIX}fullsize{'x'.join(map(str, size))}"
    mhd = folder / f"{uid}.mhd"
    if not mhd.is_file():
        array, geometry, nodules, _ = synthetic.make_scan(np.random.default_rng(0), size, 3, spacing=spacing)
        synthetic.write_mhd(array, geometry, mhd)
        (work / "data" / "nodules.json").write_text(json.dumps([[*n.centre, n.diameter] for n in nodules]))
    return {"seriesuid": uid, "image": str(mhd)}


def child(side: str, work: Path, weights: Path, threads: int, reference_window: list[int]) -> None:
    import torch

    torch.set_num_threads(threads)
    from benchmarks.speed.luna16 import ReferenceInference, our_evaluator

    item = json.loads((work / "item.json").read_text())
    out = work / f"out_{side}"
    start = time.perf_counter()
    if side == "reference":
        ReferenceInference(item, weights, out, reference_window)()
        window = reference_window
    else:
        evaluator, parser = our_evaluator(item, weights, out, None, {"num_workers": 0})
        window = parser.get_parsed_content("val_patch_size")
        evaluator.run()
    seconds = time.perf_counter() - start
    harness.child_report({"side": side, "seconds": round(seconds, 1), "window": list(window)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", type=Path, default=Path("work_dirs/luna16_fullsize"))
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, nargs=3, default=list(SIZE), help="voxels x y z of the scan")
    p.add_argument("--sides", nargs="+", default=["ours", "reference"], choices=["ours", "reference"])
    p.add_argument("--reference_window", type=int, nargs=3, default=REFERENCE_WINDOW, help="smaller for a smoke run")
    p.add_argument("--min_free_gb", type=float, default=14.0, help="available memory needed to start the reference")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    harness.setup_paths(BUNDLE)
    work = args.work_dir.resolve()
    weights = work / "ckpt" / "model.pt"
    if args.child:
        child(args.child, work, weights, args.threads, args.reference_window)
        return
    import torch

    from benchmarks.speed.agreement import match_detections
    from benchmarks.speed.luna16 import _scoring_network, resampled_shape

    work.mkdir(parents=True, exist_ok=True)
    machine = harness.machine_info(args.threads)
    t = time.perf_counter()
    item = make_scan(work, tuple(args.size), SPACING_MM)
    (work / "item.json").write_text(json.dumps(item))
    shape = resampled_shape(item["image"])
    print(f"scan {args.size} at {SPACING_MM} mm ({time.perf_counter() - t:.0f} s), resampled to {shape}", flush=True)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": harness.seeded_state(_scoring_network)}, weights)

    rows: dict[str, Any] = {}
    for side in args.sides:
        free = available_gb()
        if side == "reference" and free < args.min_free_gb:
            rows[side] = {"not_run": f"{free:.1f} GB available < --min_free_gb {args.min_free_gb}"}
            print(f"{side}: {rows[side]['not_run']}", flush=True)
            continue
        print(f"{side}: running ({free:.1f} GB available) ...", flush=True)
        argv = ["--child", side, "--work_dir", str(work), "--threads", str(args.threads)]
        argv += ["--reference_window", *map(str, args.reference_window)]
        result = harness.run_child(Path(__file__).resolve(), argv, timeout=4 * 3600)
        rows[side] = {k: result[k] for k in ("window", "seconds", "peak_rss_mb")}
        print(f"{side}: {json.dumps(rows[side])}", flush=True)
    if all("seconds" in rows.get(s, {}) for s in ("ours", "reference")):
        uid = item["seriesuid"]
        ref, ours = (json.loads((work / f"out_{s}" / f"{uid}.json").read_text()) for s in ("reference", "ours"))
        rows["agreement"] = match_detections(ref, ours)
        rows["speedup"] = harness.ratio(rows["reference"]["seconds"], rows["ours"]["seconds"])
        rows["memory_ratio"] = round(rows["reference"]["peak_rss_mb"] / rows["ours"]["peak_rss_mb"], 2)
    report = {
        "what": f"one {'x'.join(map(str, args.size))} CT at {SPACING_MM} mm (resampled {shape}) through luna16 "
        "inference end to end, each side in a fresh process; ours = configs/inference.json as shipped "
        f"(num_workers 0), reference = model-zoo pipeline fp32 with the {args.reference_window} window; seeded weights",
        "command": harness.command_line(),
        "machine": machine,
        **rows,
    }
    harness.print_report(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
