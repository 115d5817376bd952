"""CPU demo: generate a synthetic CXR14-layout dataset, then run the bundle's documented train / evaluate /
inference commands as subprocesses and write ``<work_dir>/results.json``.

    python -m scripts.demo --work_dir /tmp/cxr14_demo        (from the bundle directory)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.files import write_json_atomic

BUNDLE = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict[str, str]) -> float:
    print("+ " + " ".join(args), flush=True)
    start = time.time()
    subprocess.run(args, cwd=BUNDLE, env=env, check=True)
    return time.time() - start


def main(
    work_dir: str = "/tmp/cxr14_demo",
    n_patients: int = 260,
    size: int = 256,
    seed: int = 0,
    dataset_dir: str = "",
    reference: bool = False,
) -> dict:
    """Generate data, train (configs/demo.json), evaluate on the official-style test list, infer on DICOM copies.

    ``dataset_dir``: an NIH ChestX-ray14 root instead of generated data (no inference step: it has no DICOM copies);
    ``reference``: train with the bundle's default configs (DenseNet-121, 224 px) instead of the CPU demo overrides.
    """
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data, run = (Path(dataset_dir).resolve() if dataset_dir else work / "data"), work / "run"
    train_configs = "['configs/train.json']" if reference else "['configs/train.json','configs/demo.json']"
    eval_configs = (
        "['configs/train.json','configs/evaluate.json']"
        if reference
        else "['configs/train.json','configs/demo.json','configs/evaluate.json']"
    )
    env = dict(os.environ)
    root = str(BUNDLE.parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.time()
    if not dataset_dir and not (data / "Data_Entry_2017.csv").is_file():
        print(f"generating {n_patients} synthetic patients ({size}x{size}) in {data}", flush=True)
        from scripts.synthetic import generate

        generate(data, n_patients=n_patients, size=size, seed=seed)
    print(f"data ready in {time.time() - start:.0f} s", flush=True)
    bundle_cmd = [sys.executable, "-m", "monai.bundle", "run"]
    common = ["--dataset_dir", str(data), "--bundle_root", str(run), "--logging_file", "configs/logging.conf"]
    train_seconds = _run([*bundle_cmd, "training", "--config_file", train_configs, *common], env)
    eval_seconds = _run(
        [
            *bundle_cmd,
            "evaluating",
            "--config_file",
            eval_configs,
            *common,
        ],
        env,
    )
    infer_seconds = (
        0.0
        if dataset_dir
        else _run(
            [
                *bundle_cmd,
                "run",
                "--config_file",
                "['configs/inference.json','configs/demo_inference.json']",
                "--dataset_dir",
                str(data / "dicom"),
                "--bundle_root",
                str(run),
                "--logging_file",
                "configs/logging.conf",
            ],
            env,
        )
    )
    demo = json.loads((BUNDLE / "configs" / "demo.json").read_text())
    report = json.loads((run / "eval" / "metrics.json").read_text())
    metrics = {"mean_auroc": report["summary"]["auroc"]}
    metrics.update({f"auroc_{r['label']}": r["auroc"] for r in report["labels"]})
    metrics.update(
        {"mean_sensitivity": report["summary"]["sensitivity"], "mean_specificity": report["summary"]["specificity"]}
    )
    results = {
        "bundle": "cxr14_classification",
        "metrics": metrics,
        "train_seconds": round(train_seconds, 1),
        "notes": (
            (f"{data} (NIH layout)" if dataset_dir else f"synthetic CXR14 layout, {n_patients} patients, {size}px")
            + (
                " with the default configs (DenseNet-121, 224 px)"
                if reference
                else f" resized to {demo['image_size']}, small DenseNet (95k params)"
            )
            + f"; test = generated test_list.txt ({report['summary']['n_test_images']} images); thresholds by"
            f" Youden on validation; evaluate {eval_seconds:.0f} s, inference on DICOM copies {infer_seconds:.0f} s;"
            f" outputs in {run}"
        ),
    }
    write_json_atomic(results, work / "results.json")
    print(json.dumps(results, indent=1))
    print(f"demo finished in {time.time() - start:.0f} s; wrote {work / 'results.json'}")
    return results


if __name__ == "__main__":
    import fire

    fire.Fire(main)
