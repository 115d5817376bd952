"""CPU demo: synthetic LUNA16-layout data -> the bundle's documented train / evaluate / inference commands -> results.

    cd bundles/luna16_detection && python -m scripts.demo --work_dir /tmp/luna16_demo

Every step is the documented ``python -m monai.bundle run ...`` command (with ``configs/demo.json`` layered on
top: small ResNet/FPN, 64x64x32 patches, 1 x 1 x 1.5 mm resampling, 27 epochs) run as a subprocess. The test
split is official fold 0 (subset0); the FROC is computed twice, by the evaluate run and by ``scripts.froc`` from
the inference submission CSV, and both are printed. Writes ``<work_dir>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.files import write_json_atomic

BUNDLE = Path(__file__).resolve().parents[1]
REPO = BUNDLE.parents[1]


def run(cmd: list[str], env: dict[str, str]) -> float:
    """Run one documented command from the bundle directory; returns its wall time."""
    print("+", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=BUNDLE, env=env, check=True)
    return time.time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", required=True)
    p.add_argument("--n_scans", type=int, default=60)
    p.add_argument("--size", type=int, nargs=3, default=[96, 96, 48])
    p.add_argument("--epochs", type=int, default=None, help="override demo.json epochs")
    p.add_argument("--dataset_dir", default="", help="a LUNA16 root in the real layout instead of generated data")
    p.add_argument("--reference", action="store_true", help="the bundle's default configs instead of demo.json")
    a = p.parse_args()

    work = Path(a.work_dir).resolve()
    data, out = (Path(a.dataset_dir).resolve() if a.dataset_dir else work / "data"), work / "bundle"
    demo = [] if a.reference else ["configs/demo.json"]
    train_cfg, eval_cfg, infer_cfg = (
        str(["configs/train.json", *demo]),
        str(["configs/train.json", "configs/evaluate.json", *demo]),
        str(["configs/inference.json", *demo]),
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")  # the shared 2-core machine measured faster with one thread per job
    py = sys.executable

    t0 = time.time()
    if not a.dataset_dir:
        from scripts.synthetic import generate

        generate(data, n_scans=a.n_scans, size=tuple(a.size), seed=0)
        print(f"generated {a.n_scans} synthetic scans in {time.time() - t0:.1f} s under {data}", flush=True)

    common = ["--dataset_dir", str(data), "--bundle_root", str(out)]
    extra = ["--epochs", str(a.epochs), "--val_interval", str(a.epochs)] if a.epochs else []
    train_s = run(
        [py, "-m", "monai.bundle", "run", "training", "--config_file", train_cfg, *common, *extra],
        env,
    )  # fmt: skip
    eval_s = run(
        [py, "-m", "monai.bundle", "run", "evaluating", "--config_file", eval_cfg, *common],
        env,
    )  # fmt: skip
    infer_s = run(
        [py, "-m", "monai.bundle", "run", "--config_file", infer_cfg,
         "--dataset_dir", str(data / "subset0"), "--bundle_root", str(out), "--save_png", "True"],
        env,
    )  # fmt: skip

    froc = json.loads((out / "eval" / "froc.json").read_text())
    uids = work / "test_seriesuids.txt"
    uids.write_text("\n".join(sorted(m.stem for m in (data / "subset0").glob("*.mhd"))) + "\n")
    csv_dir = work / "froc_from_submission"
    excluded = [
        data / "annotations_excluded.csv",
        data / "evaluationScript" / "annotations" / "annotations_excluded.csv",
    ]
    excluded_args = next((["--excluded", str(f)] for f in excluded if f.is_file()), [])
    run(
        [py, "-m", "scripts.froc", "--annotations", str(data / "annotations.csv"), *excluded_args,
         "--predictions", str(out / "eval" / "inference" / "submission.csv"),
         "--seriesuids", str(uids), "--out_dir", str(csv_dir)],
        env,
    )  # fmt: skip
    froc_csv = json.loads((csv_dir / "froc.json").read_text())

    metrics = {"cpm": froc["cpm"], "cpm_from_submission_csv": froc_csv["cpm"]}
    metrics.update({f"sensitivity@{r}fp": s for r, s in froc["sensitivity_at_fp_rates"].items()})
    coco = froc.get("coco", {})
    for name in ("mAP_IoU_0.10_0.50_0.05_MaxDet_100", "mAR_IoU_0.10_0.50_0.05_MaxDet_100"):
        if name in coco:
            metrics[f"coco_{name}"] = coco[name]
    if "bootstrap" in froc:
        metrics["cpm_ci95_low"], metrics["cpm_ci95_high"] = froc["bootstrap"]["cpm_ci95"]
    results = {
        "bundle": "luna16_detection",
        "metrics": metrics,
        "train_seconds": round(train_s, 1),
        "notes": (
            (
                f"{data} (LUNA16 layout)"
                if a.dataset_dir
                else f"synthetic LUNA16 layout, {a.n_scans} scans {a.size[0]}x{a.size[1]}x{a.size[2]}"
            )
            + f", {'default' if a.reference else 'demo'} configs; test = subset0 "
            f"({froc['n_scans']} scans, {froc['n_nodules']} nodules), validation = subset1, training = subsets 2-9; "
            f"small RetinaNet (configs/demo.json), evaluate {eval_s:.0f} s, inference {infer_s:.0f} s; "
            "CPM = mean sensitivity at 1/8..8 FP/scan (LUNA16 rules, scripts/froc.py)"
        ),
    }
    write_json_atomic(results, work / "results.json")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
