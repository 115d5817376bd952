"""LUNA16 at the real scan size: memory and time of one sliding window of the bundle's full network, per window size.

A real LUNA16 scan is about 512x512x280 voxels after resampling to 0.703125x0.703125x1.25 mm. The bundle's
``inference.json`` runs the model zoo's network (RetinaNet, 3D ResNet-50 FPN) with the model zoo's sliding window,
512x512x192. Inference holds one window's activations at a time, so the window sets the peak memory, and the number
of windows times the time of one sets the wall time. This script builds ``inference.json``'s ``network`` (seeded
weights) in a fresh process per window size, runs one forward pass on one window in inference mode, and reports
the process's peak resident memory and the seconds it took; then the number of windows MONAI's sliding window
(overlap 0.25, as configured) needs for a real-size scan, and the projected wall time of one scan.

    .venv/bin/python -m benchmarks.speed.luna16_window --out benchmarks/results/luna16_window.json
    .venv/bin/python -m benchmarks.speed.luna16_window --windows 192,192,80 256,256,96 --max_gb 20

A window whose estimated memory exceeds ``--max_gb`` is not run (reported as such): on a 24 GiB machine the
model zoo's 512x512x192 window would take the machine down rather than fail cleanly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.speed import harness

BUNDLE = "luna16_detection"
REAL_SCAN = (512, 512, 280)  # voxels after resampling to 0.703125 x 0.703125 x 1.25 mm (a 350 mm long chest CT)
OVERLAP = 0.25


def windows_needed(scan: tuple[int, ...], window: tuple[int, ...], overlap: float = OVERLAP) -> int:
    """Windows MONAI's sliding window places over ``scan`` (``monai.inferers.utils._get_scan_interval``)."""
    count = 1
    for s, w in zip(scan, window):
        if s <= w:
            continue
        step = max(int(w * (1 - overlap)), 1)
        count *= math.ceil((s - w) / step) + 1
    return count


def child(window: list[int], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    bundle_dir = harness.setup_paths(BUNDLE)
    parser = harness.bundle_parser(bundle_dir, "inference.json", {"val_patch_size": window})
    parser.get_parsed_content("imports")
    torch.manual_seed(0)
    network = parser.get_parsed_content("network").eval()
    x = torch.randn(1, 1, *window)
    start = time.perf_counter()
    with torch.inference_mode():
        out = network(x)
    seconds = time.perf_counter() - start
    levels = {k: [list(t.shape) for t in v] for k, v in out.items()} if isinstance(out, dict) else str(type(out))
    harness.child_report({"window": window, "seconds": round(seconds, 1), "outputs": levels})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", nargs="*", default=["128,128,48", "192,192,80", "256,256,96", "512,512,192"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max_gb", type=float, default=20.0, help="skip windows projected above this peak memory")
    p.add_argument("--out", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child([int(v) for v in args.child.split(",")], args.threads)
        return
    machine = harness.machine_info(args.threads)
    rows: list[dict[str, Any]] = []
    per_voxel_mb = None  # memory above the first window's baseline, per window voxel, from the runs so far
    base_mb = None
    for spec in args.windows:
        window = [int(v) for v in spec.split(",")]
        voxels = math.prod(window)
        n = windows_needed(REAL_SCAN, tuple(window))
        row: dict[str, Any] = {"window": window, "windows_per_real_scan": n}
        if per_voxel_mb is not None and base_mb + per_voxel_mb * voxels > args.max_gb * 1024:
            row["skipped"] = f"projected {(base_mb + per_voxel_mb * voxels) / 1024:.0f} GB > --max_gb {args.max_gb}"
            print(json.dumps(row), flush=True)
            rows.append(row)
            continue
        result = harness.run_child(Path(__file__), ["--child", spec, "--threads", str(args.threads)], timeout=7200)
        row.update(
            peak_rss_mb=result["peak_rss_mb"],
            seconds_per_window=result["seconds"],
            projected_minutes_per_real_scan=round(result["seconds"] * n / 60, 1),
        )
        if base_mb is None:
            base_mb = result["peak_rss_mb"]
        else:
            first = rows[0]
            per_voxel_mb = (result["peak_rss_mb"] - first["peak_rss_mb"]) / (voxels - math.prod(first["window"]))
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "what": "one forward pass of luna16_detection inference.json's network (RetinaNet, ResNet-50 FPN, fp32, "
        "seeded weights) on one sliding window, in a fresh process; windows and projected time for a "
        f"{'x'.join(map(str, REAL_SCAN))} scan (real LUNA16 size after resampling), overlap {OVERLAP}",
        "machine": machine,
        "rows": rows,
    }
    harness.print_report(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
