"""Planted faults: does the quality benchmark catch the mistakes that matter? (``make benchmark-planted``)

    python -m benchmarks.planted [--faults name ...] [--clean_dir work_dirs/benchmark] [--work_dir work_dirs/planted]

Each fault below is a realistic mistake, planted as a one-line patch in a copy of the repository (or as a config
override on one command). The quality benchmark (``benchmarks/quality.py``) then runs on the faulty copy:

- ``stage: "infer"``: the fault sits in the inference path only (a writer, a loader, an inference override), so
  the clean run's trained weights are reused and inference plus the output checks run again;
- ``stage: "train"``: the fault changes what the model is trained on, so training, evaluation and inference run
  again on the clean run's data.

A fault is caught when the run fails or any checked metric leaves its band in ``benchmarks/expected.json``.
The clean run (``make benchmark``, ``--clean_dir``) must exist: this script reuses its data and weights.
Writes ``benchmarks/results/planted.json`` (``{"<fault>": {"caught": ..., "metric": ..., "value": ...}}``; faults
not run keep their entries) and exits 1 unless every fault run is caught.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.quality import EXPECTED, benchmark_env, check, failed, run_synthetic
from common.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "planted.json"


@dataclass(frozen=True)
class Fault:
    name: str
    bundle: str
    stage: str  # "infer" or "train"
    what: str
    file: str = ""  # repository-relative file patched in the copy
    old: str = ""  # exact text, which must occur once
    new: str = ""
    args: dict[str, list[str]] = field(default_factory=dict)  # extra arguments per demo step


FAULTS = [
    Fault(
        "brats_tc_et_swapped",
        "brats_segmentation",
        "infer",
        "the label writer reads the network's TC and ET channels in the wrong order",
        "bundles/brats_segmentation/scripts/brats.py",
        "        tc, wt, et = (np.asarray(r) > 0.5 for r in regions[:3])",
        "        et, wt, tc = (np.asarray(r) > 0.5 for r in regions[:3])",
    ),
    Fault(
        "brats_2023_written_with_2021_labels",
        "brats_segmentation",
        "infer",
        "the item's edition is ignored: 2023 cases get the config's default (2021) label values, ET written as 4",
        "bundles/brats_segmentation/scripts/brats.py",
        "        return convention(_name(d.get(self.edition_key) or self.default_edition))",
        "        return convention(self.default_edition)",
    ),
    Fault(
        "brats_modalities_reversed",
        "brats_segmentation",
        "infer",
        "the inference loader stacks the modalities FLAIR, T2, T1, T1c instead of T1c, T1, T2, FLAIR",
        "bundles/brats_segmentation/scripts/brats.py",
        "            image = torch.cat(channels, dim=0)",
        "            image = torch.cat(channels[::-1], dim=0)",
    ),
    Fault(
        "cxr14_monochrome1_not_inverted",
        "cxr14_classification",
        "infer",
        "MONOCHROME1 DICOM (bright air) read without inversion",
        "bundles/cxr14_classification/scripts/io.py",
        "        image = 1.0 - image\n",
        "        image = image\n",
    ),
    Fault(
        "cxr14_inference_fixed_window",
        "cxr14_classification",
        "infer",
        "inference normalises with the fixed mean/std only (its per-image percentile scaling dropped, as in a config "
        "copied from before it): the window a file was exported with reaches the network",
        args={"infer": ["--preprocessing#transforms#2", "{'_target_': 'Identityd', 'keys': 'image'}"]},
    ),
    Fault(
        "cxr14_label_order_shuffled",
        "cxr14_classification",
        "train",
        "label vectors built in alphabetical order while outputs are named in the NIH order",
        "bundles/cxr14_classification/scripts/labels.py",
        "    return [int(name in present) for name in LABELS]",
        "    return [int(name in present) for name in sorted(LABELS)]",
    ),
    Fault(
        "luna16_world_to_voxel_x_flipped",
        "luna16_detection",
        "infer",
        "world LPS <-> RAS conversion keeps the x sign (only y flipped): the written world boxes land mirrored in x "
        "(checked on the inference path with the clean weights; training with it would learn boxes off the nodules)",
        "bundles/luna16_detection/scripts/boxes.py",
        "LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])",
        "LPS_TO_RAS = np.array([1.0, -1.0, 1.0])",
    ),
    Fault(
        "luna16_scans_read_in_lps",
        "luna16_detection",
        "infer",
        "inference reads the scans with ITK's LPS affine (MONAI's default) while boxes are converted as RAS",
        args={"infer": ["--preprocessing#transforms#0#affine_lps_to_ras", "False"]},
    ),
]


def faulty_copy(fault: Fault, dst: Path) -> Path:
    """A copy of the code the bundle runs (its bundle directory and ``common``) with the fault applied."""
    shutil.rmtree(dst, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "models", "eval", "runs", "data")
    shutil.copytree(ROOT / "bundles" / fault.bundle, dst / "bundles" / fault.bundle, ignore=ignore)
    shutil.copytree(ROOT / "common", dst / "common", ignore=ignore)
    if fault.file:
        target = dst / fault.file
        text = target.read_text()
        if text.count(fault.old) != 1:
            raise RuntimeError(f"{fault.name}: the text to patch occurs {text.count(fault.old)} times in {fault.file}")
        target.write_text(text.replace(fault.old, fault.new))
    return dst / "bundles" / fault.bundle


def reuse_clean_run(clean: Path, work: Path, stage: str) -> None:
    """The clean run's data (and, for inference faults, its weights and evaluation) in a fresh work folder."""
    shutil.rmtree(work, ignore_errors=True)
    if stage == "infer":
        shutil.copytree(clean, work, ignore=shutil.ignore_patterns("bench", "inference", "mlruns", "results.json"))
    else:
        shutil.copytree(clean / "dataset", work / "dataset")


def run_fault(fault: Fault, clean_dir: Path, work_dir: Path, expected: dict) -> dict:
    clean = clean_dir / fault.bundle
    if not (clean / "results.json").is_file():
        raise SystemExit(f"{clean}: no clean benchmark run here; run `make benchmark` first (or pass --clean_dir)")
    bundle = faulty_copy(fault, work_dir / fault.name / "repo")
    work = work_dir / fault.name / "run"
    reuse_clean_run(clean, work, fault.stage)
    steps = ("infer",) if fault.stage == "infer" else ("train", "evaluate", "infer")
    start = time.perf_counter()
    result = run_synthetic(bundle, work, benchmark_env(), steps=steps, extra=fault.args, dataset=work / "dataset")
    rows = check(result.get("metrics", {}), expected["bundles"][fault.bundle]) if result["ok"] else []
    result["checks"] = rows
    worst = [r for r in rows if r["status"] == "REGRESSION"]
    record = {
        "bundle": fault.bundle,
        "stage": fault.stage,
        "what": fault.what,
        "caught": failed(result),
        "seconds": round(time.perf_counter() - start, 1),
        "clean_run": str(clean),
    }
    if not result["ok"]:
        record.update(metric=None, value=None, caught_by=f"the run failed at {result.get('failed_step')}")
    elif worst:
        first = max(worst, key=lambda r: abs(r["measured"] - r["expected"]) / r["tolerance"])
        record.update(metric=first["metric"], value=first["measured"], expected=first["expected"])
        record["caught_by"] = ", ".join(f"{r['metric']} {r['measured']:.4f} (expected {r['expected']:.4f} "
                                        f"±{r['tolerance']})" for r in worst)  # fmt: skip
    else:
        record.update(metric=None, value=None, caught_by="NOT CAUGHT: every checked metric stayed in its band")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", nargs="*", help=f"fault names (default: all): {[f.name for f in FAULTS]}")
    parser.add_argument("--clean_dir", type=Path, default=ROOT / "work_dirs" / "benchmark")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "work_dirs" / "planted")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    known = {f.name: f for f in FAULTS}
    unknown = sorted(set(args.faults or []) - set(known))
    if unknown:
        parser.error(f"unknown fault(s) {unknown}; known: {sorted(known)}")
    faults = [known[n] for n in args.faults] if args.faults else FAULTS
    expected = json.loads(EXPECTED.read_text())
    # faults not run this time keep their earlier results (a subset re-run updates only its own entries)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = {n: r for n, r in results.items() if n in known}
    for fault in faults:
        print(f"\n##### planted fault {fault.name} ({fault.bundle}, {fault.stage} stage): {fault.what}", flush=True)
        results[fault.name] = run_fault(fault, args.clean_dir.resolve(), args.work_dir.resolve(), expected)
        print(f"##### {fault.name}: {results[fault.name]['caught_by']}", flush=True)
    write_json_atomic(results, args.out, indent=2)
    lines = ["| fault | bundle | stage | caught | by |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['bundle']} | {r['stage']} | {r['caught']} | {r['caught_by']} |" for n, r in results.items()]
    print("\n" + "\n".join(lines) + f"\n\nwrote {args.out}")
    missed = [f.name for f in faults if not results[f.name]["caught"]]
    if missed:
        print(f"planted faults NOT caught: {missed}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
