"""The training data pipeline alone (decode + transforms, no network), ours against the model zoo's (issue 18).

    .venv/bin/python -m benchmarks.speed.loader --bundle brats --out benchmarks/results/loader_brats.json
    .venv/bin/python -m benchmarks.speed.loader --bundle luna16 --out benchmarks/results/loader_luna16.json
    .venv/bin/python -m benchmarks.speed.loader --bundle cxr --out benchmarks/results/loader_cxr.json

On a GPU the network step is fast and the CPU-side loader sets the pace of training (REFERENCE.md section 8); this
measures that pace on its own. Each variant iterates its training DataLoader for ``--epochs`` epochs over the same
synthetic files (the bundle's generator at real size: BraTS 240x240x155 NIfTI, LUNA16 MetaImage scans resampled to
0.703x0.703x1.25 mm, CXR14 1024x1024 PNG) and records every epoch's wall time:

- ``reference``: the model zoo's training transforms in a plain ``Dataset`` (decodes every item every epoch), the
  zoo's worker count;
- ``ours``: the bundle's ``train.json`` loader as shipped (``cache_rate`` 0, no ``cache_dir``: decodes every epoch);
- ``ours+disk_cache``: the same with ``--cache_dir`` (``common.data``): the first epoch decodes and writes the
  deterministic prefix once, later epochs (and later runs) read one tensor file per item; its disk cost is stated.

Figures: items per second of each epoch; the steady rate is the median over epochs 2.. (the first epoch is reported
apart: it pays worker start-up and, with the disk cache, the decode and write). An item is what the dataset yields
per datalist entry (BraTS: one crop; LUNA16: one scan's ``batch_size`` patches; CXR14: one image). A GPU whose
training step consumes items faster than a loader's steady rate waits for that loader: the rate is the starvation
point. Ratios are against the reference measured in the same run, variants interleaved epoch by epoch.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.speed import harness, report

BUNDLES = {"brats": "brats_segmentation", "luna16": "luna16_detection", "cxr": "cxr14_classification"}


def command() -> str:
    """This run's command as a user types it from the repository root (``--work_dir``, a scratch folder, left out)."""
    argv, shown = sys.argv[1:], []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--work_dir":
            skip = True
        elif not arg.startswith("--work_dir="):
            shown.append(arg)
    return "python -m benchmarks.speed.loader " + shlex.join(shown)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def item_files(items: list[dict[str, Any]]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        for value in item.values():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str) and Path(v).is_file():
                    files.append(Path(v))
                    raw = Path(v).with_suffix(".raw")  # a MetaImage header's voxel file
                    if v.endswith(".mhd") and raw.is_file():
                        files.append(raw)
    return files


def setup(short: str, work: Path, smoke: bool) -> tuple[list[dict[str, Any]], Any, int, dict[str, Any], dict]:
    """Data and the reference's transforms for one bundle: (items, reference transform, reference workers,
    overrides of our train.json, sizes)."""
    mod = importlib.import_module(f"benchmarks.speed.{short}")  # puts the bundle's scripts on the path
    if short == "brats":
        from scripts.prepare import load_split

        size = (48, 48, 32) if smoke else (240, 240, 155)
        n, roi = (3, [32, 32, 24]) if smoke else (8, [128, 128, 128])
        root = mod.make_data(work, size, n)
        items = load_split(root, "training") + load_split(root, "validation") + load_split(root, "testing")
        items = [{"image": i["image"], "label": i["label"]} for i in items][:n]
        ours = {"dataset_dir": str(root), "train_datalist": items, "roi_size": roi}
        return items, mod.reference_train_transforms(roi), 4, ours, {"case": size, "crop": roi, "cases": n}
    if short == "luna16":
        from scripts.prepare import build_items

        size = (48, 48, 24) if smoke else (512, 512, 250)
        n, patch, batch = (3, [32, 32, 16], 1) if smoke else (4, [192, 192, 80], 4)
        root = work / "data"
        if not (root / "annotations.csv").is_file():
            from scripts import synthetic

            synthetic.generate(root, n_scans=n, size=size, n_subsets=2, empty_fraction=0.0, max_nodules=3, seed=0)
        items = build_items(root)[:n]
        ours = {"dataset_dir": str(root), "datalist": {"training": items, "validation": items[:1]}}
        ours.update({"patch_size": patch, "batch_size": batch})
        sizes = {"scan_written": size, "patch": patch, "patches_per_scan": batch, "scans": n}
        return items, mod.reference_train_transforms(patch, batch), 4, ours, sizes
    size = 256 if smoke else 1024
    root = mod.make_data(work, size, 12 if smoke else 40)
    items = mod.all_items(root)
    ours = {"dataset_dir": str(root), "datalist": {"training": items, "validation": items[:1]}}
    return items, mod._reference_pre(train=True), 4, ours, {"image": [size, size], "images": len(items)}


def reference_loader(items: list[dict[str, Any]], transform: Any, workers: int, short: str) -> Any:
    from monai.data import DataLoader, Dataset
    from monai.data.utils import no_collation

    if short == "luna16":
        data = [{"image": i["image"], "box": i["box"], "label": i["label"]} for i in items]
        return DataLoader(Dataset(data, transform), batch_size=1, shuffle=True, num_workers=workers,
                          collate_fn=no_collation)  # fmt: skip
    batch = 16 if short == "cxr" else 1
    return DataLoader(Dataset(items, transform), batch_size=batch, shuffle=True, num_workers=workers)


def our_loader(short: str, overrides: dict[str, Any], cache_dir: Path | None) -> tuple[Any, int]:
    bundle_dir = harness.BUNDLES / BUNDLES[short]
    parser = harness.bundle_parser(
        bundle_dir, "train.json", {**overrides, "cache_dir": str(cache_dir) if cache_dir else None}
    )
    parser.get_parsed_content("imports")
    return parser.get_parsed_content("train#dataloader"), parser.get_parsed_content("num_workers")


def epoch_seconds(loader: Any) -> tuple[float, int]:
    """Wall time of one full pass over ``loader`` and the number of dataset items it yielded."""
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch) if isinstance(batch, list) else len(next(iter(batch.values())))
    return time.perf_counter() - t0, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", choices=sorted(BUNDLES), required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--work_dir", default=None)
    p.add_argument("--epochs", type=int, default=4, help="epochs per variant (the first reported apart)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 epochs: checks the script, times nothing")
    p.add_argument("--reference_workers", type=int, default=None, help="default: the model zoo's (4)")
    p.add_argument("--note", default="", help="stored in the results (e.g. why --reference_workers was changed)")
    a = p.parse_args()
    if a.smoke:
        a.epochs = 2
    args = argparse.Namespace(threads=2, smoke=a.smoke, work_dir=a.work_dir)
    work, machine, _ = harness.start(args, f"loader_{a.bundle}")
    items, ref_transform, ref_workers, overrides, sizes = setup(a.bundle, work, a.smoke)
    ref_workers = ref_workers if a.reference_workers is None else a.reference_workers
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    ours, our_workers = our_loader(a.bundle, overrides, None)
    cached, _ = our_loader(a.bundle, overrides, cache)
    loaders = {"reference": reference_loader(items, ref_transform, ref_workers, a.bundle), "ours": ours}
    loaders["ours+disk_cache"] = cached
    epochs: dict[str, list[float]] = {name: [] for name in loaders}
    counts: dict[str, int] = {}
    for e in range(a.epochs):  # interleaved: a slow spell of the machine hits every variant
        for name, loader in loaders.items():
            seconds, n = epoch_seconds(loader)
            epochs[name].append(round(seconds, 3))
            counts[name] = n
            print(f"epoch {e + 1}/{a.epochs} {name:16s} {seconds:7.2f} s  {n / seconds:7.2f} items/s", flush=True)
    rates = {name: counts[name] / statistics.median(s[1:] or s) for name, s in epochs.items()}
    first = {name: counts[name] / s[0] for name, s in epochs.items()}
    source = sum(f.stat().st_size for f in item_files(items))
    results = {
        "what": f"{BUNDLES[a.bundle]} training loader alone (decode + transforms, no network)",
        "command": command(),
        "machine": machine,
        "smoke": a.smoke,
        "note": a.note,
        "sizes": sizes,
        "workers": {"reference": ref_workers, "ours": our_workers, "ours+disk_cache": our_workers},
        "items_per_epoch": counts,
        "epoch_seconds": epochs,
        "steady_items_per_s": {k: round(v, 3) for k, v in rates.items()},
        "first_epoch_items_per_s": {k: round(v, 3) for k, v in first.items()},
        "speedup_vs_reference": {k: round(v / rates["reference"], 2) for k, v in rates.items()},
        "disk": {"source_bytes": source, "cache_bytes": folder_bytes(cache)},
    }
    print(report.loader_table(results))
    print(f"disk: source files {source / 1e6:.1f} MB, cache {results['disk']['cache_bytes'] / 1e6:.1f} MB")
    if a.out:
        print(f"wrote {harness.write_results(a.out, results)}")


if __name__ == "__main__":
    main()
