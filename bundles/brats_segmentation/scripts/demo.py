"""End-to-end CPU demo: synthetic BraTS 2021 data -> train -> evaluate (held-out test split) -> infer.

Runs the bundle's own documented commands as subprocesses from the bundle directory:

    python -m scripts.demo --work_dir /tmp/brats_demo

and writes ``<work_dir>/results.json`` with the per-region test Dice and HD95 (BraTS empty-case rule and
the NaN rule) and the training time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.files import write_json_atomic

BUNDLE_DIR = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = "['configs/train.json','configs/demo.json']"
EVAL_CONFIGS = "['configs/train.json','configs/evaluate.json','configs/demo.json']"


def _run(args: list[str], env: dict[str, str]) -> float:
    print("$ " + " ".join(args), flush=True)
    start = time.time()
    subprocess.run(args, cwd=BUNDLE_DIR, env=env, check=True)
    return time.time() - start


def main(
    work_dir: str = str(BUNDLE_DIR.parents[1] / "work_dirs" / "brats_segmentation"),
    n_cases: int = 48,
    size: tuple[int, int, int] = (96, 96, 64),
    seed: int = 0,
    dataset_dir: str = "",
    reference: bool = False,
) -> dict:
    """``dataset_dir``: a BraTS root in the real layout instead of generated data; ``reference``: train and infer
    with the bundle's default configs (the model-zoo recipe) instead of the CPU demo overrides."""
    work = Path(work_dir).resolve()
    data = Path(dataset_dir).resolve() if dataset_dir else work / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BUNDLE_DIR.parents[1]), str(BUNDLE_DIR)])}
    py = sys.executable

    train_configs = "['configs/train.json']" if reference else DEMO_CONFIGS
    eval_configs = "['configs/train.json','configs/evaluate.json']" if reference else EVAL_CONFIGS
    if dataset_dir:
        print(f"[demo] using the dataset at {data}", flush=True)
    elif not data.is_dir() or len(list(data.glob("BraTS2021_*"))) != n_cases:
        print(f"[demo] generating {n_cases} synthetic BraTS 2021 cases {tuple(size)} in {data}", flush=True)
        from scripts.synthetic import generate

        generate(data, n_cases=n_cases, layout="2021", size=size, seed=seed)

    common_args = ["--dataset_dir", str(data), "--bundle_root", str(work)]
    train_seconds = _run(
        [py, "-m", "monai.bundle", "run", "training", "--config_file", train_configs, *common_args], env
    )
    print(f"[demo] training took {train_seconds:.0f} s", flush=True)
    _run([py, "-m", "monai.bundle", "run", "evaluating", "--config_file", eval_configs, *common_args], env)
    metrics = json.loads((work / "eval" / "metrics.json").read_text())

    datalist = json.loads((work / "eval" / "datalist.json").read_text())
    case = datalist["testing"][0]
    case_dir = str(Path(case["image"][0]).parent)
    infer_args = ["--dataset_dir", case_dir, "--bundle_root", str(work), "--output_dir", str(work / "pred")]
    overrides = ["--overlay", "true"] + ([] if reference else ["--init_filters", "8", "--roi_size", "[96,96,64]"])
    _run([py, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", *infer_args, *overrides], env)

    keep = {k: round(v, 4) for k, v in sorted(metrics.items()) if k.startswith("test_")}
    results = {
        "bundle": "brats_segmentation",
        "metrics": keep,
        "train_seconds": round(train_seconds, 1),
        "notes": (
            (
                f"{data} ({datalist.get('edition', '?')} layout)"
                if dataset_dir
                else f"synthetic BraTS 2021 layout, {n_cases} cases {tuple(size)} at 1 mm"
            )
            + f", {'reference configs' if reference else 'demo configs'}, split "
            f"{len(datalist['training'])}/{len(datalist['validation'])}/{len(datalist['testing'])} (seed "
            f"{datalist['seed']}); metrics on the test split; test_dice/test_hd95 use the BraTS empty-case rule "
            f"(HD95 373.13 mm when exactly one mask is empty), *_nan exclude empty references; prediction "
            f"{case['case']} in {work / 'pred'}"
        ),
    }
    write_json_atomic(results, work / "results.json", indent=2)
    print(json.dumps(results, indent=2), flush=True)
    return results


if __name__ == "__main__":
    import fire

    fire.Fire(main)
