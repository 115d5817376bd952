"""The bundle docs' measured numbers are the results files' (issues 14 and 19): the folds / ensembles / TTA blocks
are what ``benchmarks/ensemble_report.py`` renders from ``benchmarks/results/ensemble.json``, the speed blocks
show the numbers of ``benchmarks/results/speed_*.json`` as ``benchmarks/speed/report.py`` renders them, and the
demo (quality benchmark) blocks are what ``benchmarks/quality_report.py`` renders from
``benchmarks/results/quality.json`` and ``benchmarks/expected.json``, the network comparisons what
``benchmarks/networks_report.py`` renders from ``benchmarks/results/networks.json``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import ensemble_report, networks_report, quality_report
from benchmarks.speed import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = json.loads(ensemble_report.RESULTS.read_text())


def test_ensemble_blocks_agree_with_the_results() -> None:
    wrong = ensemble_report.stale(RESULTS)
    assert not wrong, "\n".join(wrong.values()) + "\nrun: python -m benchmarks.ensemble_report --write"


def test_a_changed_number_in_a_doc_is_caught() -> None:
    """One digit of one figure changed inside the BraTS block, or the block gone: the check names the bundle and
    shows the changed line against the rendered one."""
    bundle = "brats_segmentation"
    doc = report.readme(bundle).read_text()
    block = report.block_of(doc, ensemble_report.BEGIN, ensemble_report.END)
    digit = re.search(r"\| 0\.\d\d(\d) ± ", block).start(1)  # the last digit of the single fold's Dice TC
    changed = block[:digit] + str((int(block[digit]) + 1) % 10) + block[digit + 1 :]
    line = block[: block.index("\n", digit)].rsplit("\n", 1)[1]
    changed_line = changed[: changed.index("\n", digit)].rsplit("\n", 1)[1]
    wrong = ensemble_report.stale(RESULTS, docs={bundle: doc.replace(block, changed)})
    assert list(wrong) == [bundle]
    assert f"\n-{changed_line}\n" in wrong[bundle] and f"\n+{line}\n" in wrong[bundle]
    assert list(ensemble_report.stale(RESULTS, docs={bundle: doc.replace(block, "")})) == [bundle]


def test_check_command_exits_1_on_a_changed_result(tmp_path: Path) -> None:
    """``--check`` against a results file with one figure changed (the docs untouched) fails; against the committed
    one it passes."""
    results = json.loads(json.dumps(RESULTS))
    results["cxr14_classification"]["ensemble"]["mean_auroc"] += 0.01
    changed = tmp_path / "ensemble.json"
    changed.write_text(json.dumps(results))
    cmd = [sys.executable, "-m", "benchmarks.ensemble_report", "--check", "--results"]
    bad = subprocess.run([*cmd, str(changed)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "cxr14_classification" in bad.stderr, bad.stdout + bad.stderr
    good = subprocess.run([*cmd, str(ensemble_report.RESULTS)], cwd=ROOT, capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr


def test_network_blocks_agree_with_the_results() -> None:
    results = json.loads(networks_report.RESULTS.read_text())
    assert {b for b, _ in networks_report.bundles(results)} == {"brats_segmentation", "cxr14_classification"}
    wrong = networks_report.stale(results)
    assert not wrong, "\n".join(wrong.values()) + "\nrun: python -m benchmarks.networks_report --write"


def test_network_block_computes_the_paired_differences() -> None:
    """The per-seed line is alternative minus default of the headline metric, seed by seed, with the sample sd:
    checked on a hand-made entry against hand-computed values; and a changed figure makes the docs stale."""
    seeds = [{"test_dice": 0.30}, {"test_dice": 0.40}, {"test_dice": 0.20}]
    alt = [{"test_dice": 0.10}, {"test_dice": 0.45}, {"test_dice": 0.10}]
    entry = {"seeds": [0, 1, 2], "default": {"per_seed": seeds}, "alternative": {"per_seed": alt}}
    line = networks_report.paired("brats_segmentation", "dynunet", entry)
    # differences -0.20, +0.05, -0.10: mean -0.0833, sd sqrt(((−0.1167)² + 0.1333² + (−0.0167)²) / 2) = 0.1258
    assert "seed 0 -0.200, seed 1 +0.050, seed 2 -0.100; mean -0.083 ± 0.126 (higher in 1 of 3 seeds)" in line
    results = json.loads(networks_report.RESULTS.read_text())
    results["brats_segmentation"]["dynunet"]["alternative"]["test_dice_ET"] += 0.01
    assert list(networks_report.stale(results)) == ["brats_segmentation"]


@pytest.mark.parametrize("short", sorted(report.BUNDLES))
def test_speed_blocks_show_the_speed_results(short: str) -> None:
    """Every line report.py renders from speed_<short>.json (intro, machine, precision, sizes, the table) is in the
    bundle's speed block. Not compared: the command line and the notes under the table, which the docs corrected
    by hand after the runs (the JSON holds the older ``benchmarks/speed/<x>.py`` invocation, and
    benchmarks/results/speed_notes.json older notes), so ``report.py --write`` would undo those corrections."""
    block = report.block_of(report.readme(report.BUNDLES[short]).read_text())
    assert block, f"{report.BUNDLES[short]}: no speed block"
    lines = set(block.splitlines())
    rendered = [line for line in report.section(short).splitlines() if not line.startswith("- command")]
    assert [line for line in rendered if line not in lines] == []


# ------------------------------------------------------------------------------------- the renderer, by hand

MACHINE = {"cpu_model": "Test CPU", "cpu_id": "Vendor family 1 model 2", "cpus": 2, "hypervisor": None,
           "torch": "2.0", "monai": "1.5"}  # fmt: skip


def _mode(mean: float, sd: float, per_seed: list[float]) -> dict:
    """A mode of a two-seed entry as benchmarks.ensemble.across_seeds writes it (mean, sample sd, per_seed)."""
    return {"mean_auroc": mean, "sd": {"mean_auroc": sd}, "per_seed": [{"mean_auroc": v} for v in per_seed]}


CXR = {
    "seeds": [0, 1],
    "single": _mode(0.8, 0.0141, [0.79, 0.81]),
    "tta": _mode(0.805, 0.0071, [0.8, 0.81]),
    "ensemble": _mode(0.82, 0.0141, [0.81, 0.83]),
    "ensemble_tta": _mode(0.825, 0.0212, [0.81, 0.84]),
    "cost": {
        "images": 10.0,
        "seconds_per_image": {"single": 0.0011, "sd": {"single": 0.0001}},
        "network_passes": {"single": 1.0, "tta": 2.0, "ensemble": 3.0, "ensemble_tta": 6.0},
        "multiplier": {
            "single": 1.0,
            "tta": 2.1,
            "ensemble": 3.1,
            "ensemble_tta": 6.3,
            "sd": {"single": 0.0, "tta": 0.1414, "ensemble": 0.1414, "ensemble_tta": 0.4243},
        },
    },  # fmt: skip
    "protocol": "Tiny protocol.",
    "runs": {
        "0": {"settings": {"folds": 3, "cxr_epochs": 2}, "machine": MACHINE | {"date_utc": "2026-01-01 10:00 UTC"}},
        "1": {"settings": {"folds": 3, "cxr_epochs": 2}, "machine": MACHINE | {"date_utc": "2026-01-01 11:00 UTC"}},
    },
}

CXR_BLOCK = """<!-- ensemble:begin -->
<!-- generated by `python -m benchmarks.ensemble_report --write` from benchmarks/results/ensemble.json; \
tests/test_docs_numbers.py checks that they agree -->
**Measured** on the seeded synthetic benchmark, test set of 10 images: mean ± sample sd over 2 training seeds (0, 1); \
the data, splits and folds are the same for every seed, each seed trains every fold again. Raw figures, every command \
and its time: [`benchmarks/results/ensemble.json`](../../../benchmarks/results/ensemble.json), key \
`cxr14_classification`.

| mode | seeds | mean AUROC | network passes | inference cost (x single fold) |
|---|---|---|---|---|
| single fold (mean of the 3 folds) | 2 | 0.800 ± 0.014 | 1 | 1 (reference) |
| single fold + mirror TTA | 2 | 0.805 ± 0.007 | 2 | 2.1 ± 0.1 |
| 3-fold ensemble | 2 | 0.820 ± 0.014 | 3 | 3.1 ± 0.1 |
| 3-fold ensemble + mirror TTA | 2 | 0.825 ± 0.021 | 6 | 6.3 ± 0.4 |

Change of the mean AUROC against the single fold, seed by seed (paired: same data and folds):

| mode | seed 0 | seed 1 | mean | higher than single fold |
|---|---|---|---|---|
| single fold + mirror TTA | +0.0100 | +0.0000 | +0.0050 | 1 of 2 seeds |
| 3-fold ensemble | +0.0200 | +0.0200 | +0.0200 | 2 of 2 seeds |
| 3-fold ensemble + mirror TTA | +0.0200 | +0.0300 | +0.0250 | 2 of 2 seeds |

- inference cost 1 = one model without TTA, 0.0011 ± 0.0001 s per image
- command (repository root): `python -m benchmarks.ensemble --bundles cxr14_classification --seeds 0 1 --folds 3 \
--cxr_epochs 2`
- machine: Test CPU (Vendor family 1 model 2), 2 CPUs (bare metal), torch 2.0, MONAI 1.5; each seed's run finished: \
seed 0 2026-01-01 10:00 UTC; seed 1 2026-01-01 11:00 UTC
- protocol (as recorded in the results file): Tiny protocol.
<!-- ensemble:end -->"""


def test_renderer_two_seeds_mean_sd_n_cost() -> None:
    assert ensemble_report.section("cxr14_classification", CXR) == CXR_BLOCK


def _luna(cpm: float, s1: float, s8: float) -> dict:
    return {"cpm": cpm, "sensitivity@8.0fp": s8, "sensitivity@0.125fp": s1, "per_seed": [{"cpm": cpm}]}


def _fused(wbf: dict, nms: dict) -> dict:
    return {**wbf, "fusion": {"wbf": wbf, "nms": nms}, "per_seed": wbf["per_seed"]}


LUNA = {
    "seeds": [1],
    "single": _luna(0.6, 0.5, 0.7),
    "tta": _fused(_luna(0.61, 0.45, 0.75), _luna(0.62, 0.55, 0.7)),
    "ensemble": _fused(_luna(0.58, 0.4, 0.75), _luna(0.65, 0.6, 0.75)),
    "ensemble_tta": _fused(_luna(0.59, 0.45, 0.7), _luna(0.66, 0.6, 0.8)),
    "cost": {
        "scans": 4.0,
        "seconds_per_scan": {"single": 0.25},
        "network_passes": {
            "single": 1.0,
            "tta_wbf": 8.0,
            "tta_nms": 8.0,
            "ensemble_wbf": 2.0,
            "ensemble_nms": 2.0,
            "ensemble_tta_wbf": 16.0,
            "ensemble_tta_nms": 16.0,
        },
        "multiplier": {
            "single": 1.0,
            "tta_wbf": 11.04,
            "tta_nms": 8.46,
            "ensemble_wbf": 2.5,
            "ensemble_nms": 2.2,
            "ensemble_tta_wbf": 30.0,
            "ensemble_tta_nms": 21.66,
        },
    },  # fmt: skip
    "fusion_default": "wbf",
    "fusion_better_on_ensemble_tta": "nms",
    "cli_check_agree": True,
    "protocol": "Tiny LUNA16 protocol.",
    "runs": {
        "1": {
            "settings": {"luna16_folds": 2, "luna16_size": [96, 96, 48]},
            "machine": MACHINE | {"hypervisor": "KVM", "date_utc": "2026-01-02 09:30 UTC"},
            "single": {"per_fold": [{"cpm": 0.6, "cpm_ci95": [0.5, 0.7]}, {"cpm": 0.6, "cpm_ci95": [0.45, 0.72]}]},
            "ensemble": {"fusion": {"wbf": {"cpm_ci95": [0.48, 0.68]}, "nms": {"cpm_ci95": [0.55, 0.75]}}},
        }
    },
    "note": "Only seed 1.",
}

LUNA_TABLE = """\
| mode | fusion | seeds | CPM | sens. @1/8 FP | sens. @8 FP | network passes | inference cost (x single fold) |
|---|---|---|---|---|---|---|---|
| single fold (mean of the 2 folds) | - | 1 | 0.600 | 0.500 | 0.700 | 1 | 1 (reference) |
| single fold + TTA, 8 flips | WBF (default) | 1 | 0.610 | 0.450 | 0.750 | 8 | 11.0 |
| single fold + TTA, 8 flips | NMS | 1 | 0.620 | 0.550 | 0.700 | 8 | 8.5 |
| 2-fold ensemble | WBF (default) | 1 | 0.580 | 0.400 | 0.750 | 2 | 2.5 |
| 2-fold ensemble | NMS | 1 | 0.650 | 0.600 | 0.750 | 2 | 2.2 |
| 2-fold ensemble + TTA, 8 flips | WBF (default) | 1 | 0.590 | 0.450 | 0.700 | 16 | 30.0 |
| 2-fold ensemble + TTA, 8 flips | NMS | 1 | 0.660 | 0.600 | 0.800 | 16 | 21.7 |"""


def test_renderer_one_seed_says_so_and_shows_both_fusions() -> None:
    text = ensemble_report.section("luna16_detection", LUNA)
    assert LUNA_TABLE in text
    assert "**one training seed so far** (seed 1): no spread over seeds, a single run" in text
    assert " ± " not in text and "seed by seed" not in text  # no sd, no paired table with one seed
    assert "- note in the results file: Only seed 1.\n" in text
    assert "default is WBF; the higher CPM with ensemble + TTA came from NMS" in text
    assert (
        "- CPM 95% bootstrap intervals (test scans resampled): single fold 0 [0.500, 0.700]; single fold 1 "
        "[0.450, 0.720]; ensemble WBF [0.480, 0.680]; ensemble NMS [0.550, 0.750]\n"
    ) in text
    assert "- inference cost 1 = one model without TTA, 0.250 s per scan\n" in text
    command = (
        "python -m benchmarks.ensemble --bundles luna16_detection --seeds 1 --luna16_folds 2 --luna16_size '[96,96,48]'"
    )
    assert f"- command (repository root): `{command}`\n" in text
    assert "(KVM VM)" in text and "seed 1 2026-01-02 09:30 UTC" in text


def test_write_replaces_only_the_block() -> None:
    doc = "# T\n\nbefore\n\n<!-- ensemble:begin -->\nold | 0.1\n<!-- ensemble:end -->\n\nafter\n"
    new = ensemble_report.updated("cxr14_classification", CXR, doc)
    assert new == "# T\n\nbefore\n\n" + CXR_BLOCK + "\n\nafter\n"
    with pytest.raises(ValueError, match="ensemble:begin"):
        ensemble_report.updated("cxr14_classification", CXR, "# no markers\n")


# ------------------------------------------------------------------------- the quality benchmark's blocks (issue 14)

QUALITY = quality_report.RESULTS
QUALITY_ENV = {"BUNDLES_AMP": "0", "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}
QUALITY_MACHINE = MACHINE | {
    "cuda": "none",
    "bf16_flags": {"avx512f": False},
    "load_average_at_start": [1.46, 1.0, 0.5],
}
QUALITY_LUNA = {
    "command": "python -m benchmarks.quality --bundles luna16_detection --update",
    "finished_utc": "2026-12-03 10:00 UTC",
    "commit": "abc1234",
    "machine": QUALITY_MACHINE,
    "env": QUALITY_ENV,
    "data": "synthetic LUNA16 layout: 4 scans",
    "seconds": {"generate": 5.2, "train": 191.6, "evaluate": 12.0, "infer": 11.9, "output_checks": 30.4},
    "metrics": {"cpm": 0.9167, "sensitivity@1.0fp": 1.0, "csv_cpm": 0.9167},
    "detail": {
        "cpm": 0.9167,
        "sensitivity_at_fp_rates": {
            "0.125": 0.8333,
            "0.25": 0.8333,
            "0.5": 0.8333,
            "1.0": 1.0,
            "2.0": 1.0,
            "4.0": 1.0,
            "8.0": 1.0,
        },
        "n_scans": 2,
        "n_nodules": 6,
        "n_detected_nodules": 6,
        "n_false_positives": 40,
        "bootstrap": {"n": 100, "cpm_ci95": [0.8, 1.0]},
        "coco": {"mAP_IoU_0.10_0.50_0.05_MaxDet_100": 0.7, "mAR_IoU_0.10_0.50_0.05_MaxDet_100": 0.85},
    },  # fmt: skip
    "validation": {"epochs": [3, 6], "val_cpm": [0.25, 0.5]},
}
QUALITY_LUNA_EXPECTED = {
    "cpm": {"expected": 0.9167, "tolerance": 0.15, "better": "higher"},
    "sensitivity@1.0fp": {"expected": 0.9167, "tolerance": 0.17, "better": "higher"},
    "csv_cpm": {"expected": 0.9167, "tolerance": 0.15, "better": "higher"},
    "csv_sensitivity@1.0fp": {"expected": 0.9167, "tolerance": 0.17, "better": "higher"},
}

QUALITY_LUNA_BLOCK = """<!-- quality:begin -->
<!-- generated by `python -m benchmarks.quality_report --write` from benchmarks/results/quality.json and \
benchmarks/expected.json; tests/test_docs_numbers.py checks that they agree -->
**Measured** by `python -m benchmarks.quality --bundles luna16_detection --update` (repository root): `make demo`'s \
steps for this bundle (`tools/demo.py` with `configs/demo_spec.json`: generate, train, evaluate on the held-out test \
split, infer), then the output checks of `benchmarks/scoring.py` on the written files; fp32, `BUNDLES_AMP=0 \
OMP_NUM_THREADS=2 PYTHONHASHSEED=0`. Data: synthetic LUNA16 layout: 4 scans. Raw figures: \
[`benchmarks/results/quality.json`](../../../benchmarks/results/quality.json), key `luna16_detection`.

What the benchmark checks (a figure past its limit fails `make benchmark`; expected values and tolerances: \
[`benchmarks/expected.json`](../../../benchmarks/expected.json)):

| metric | measured | expected | fails when |
|---|---|---|---|
| `cpm` | 0.9167 | 0.9167 | < 0.7667 |
| `sensitivity@1.0fp` | 1.0000 | 0.9167 | < 0.7467 |
| `csv_cpm` | 0.9167 | 0.9167 | < 0.7667 |
| `csv_sensitivity@1.0fp` | - | 0.9167 | < 0.7467 |

| test scans (2, 6 nodules), `eval/froc.json` | value |
|---|---|
| sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 FP/scan | 0.833, 0.833, 0.833, 1.000, 1.000, 1.000, 1.000 |
| **CPM** | **0.917** (95% bootstrap interval over scans 0.800-1.000, 100 resamples) |
| COCO mAP / mAR, IoU 0.1-0.5 (world-mm boxes, not a LUNA16 score) | 0.700 / 0.850 |
| nodules detected at any score / false positives | 6 of 6 / 40 (2 scans) |

- validation during training (`val_cpm`) at epochs 3 / 6: 0.25 / 0.50
- wall time per step, seconds: generate 5, train 192, evaluate 12, infer 12, output checks 30
- machine: Test CPU (Vendor family 1 model 2, AVX-512 no), 2 CPUs (bare metal), CUDA none; torch 2.0, MONAI 1.5; \
load average at the start 1.5
- finished 2026-12-03 10:00 UTC, commit abc1234
<!-- quality:end -->"""


def test_quality_renderer_exact_text() -> None:
    """LUNA16: every expected.json metric with measured value (or "-"), expected and failure limit; FROC detail with
    the bootstrap interval, COCO, counts; validation curve, seconds, machine, command, date, commit."""
    assert quality_report.section("luna16_detection", QUALITY_LUNA, QUALITY_LUNA_EXPECTED) == QUALITY_LUNA_BLOCK


def test_quality_renderer_brats_regions_and_cxr14_labels() -> None:
    brats = QUALITY_LUNA | {
        "detail": {
            "test": {"test_dice": 0.7, "test_dice_TC": 0.76, "test_dice_WT": 0.755, "test_dice_ET": 0.5835,
                     "test_dice_nan_TC": 0.76, "test_dice_nan_WT": 0.755, "test_dice_nan_ET": 0.8167,
                     "test_dice_nan": 0.7772, "test_hd95": 41.7, "test_hd95_TC": 8.61, "test_hd95_WT": 9.05,
                     "test_hd95_ET": 107.6},
            "n_test_cases": 7,
            "nan_rule_cases": {"TC": 7, "WT": 7, "ET": 5},
        },
        "validation": {"epochs": [4, 8], "val_dice": [0.2, 0.4], "val_dice_TC": [0.1, 0.5], "val_dice_ET": [None, 0.3]},
    }  # fmt: skip
    expected = {"test_hd95_TC": {"expected": 8.6104, "tolerance": 10.0, "better": "lower"}}
    text = quality_report.section("brats_segmentation", brats, expected)
    assert "| `test_hd95_TC` | - | 8.6104 | > 18.6104 |\n" in text
    assert (
        "| test split (7 cases), `eval/metrics.csv` | TC | WT | ET | mean |\n|---|---|---|---|---|\n"
        "| Dice, BraTS rule (`test_dice`) | 0.760 | 0.755 | 0.584 | 0.700 |\n"
        "| Dice, NaN rule (`test_dice_nan`; cases scored: TC 7, WT 7, ET 5) | 0.760 | 0.755 | 0.817 | 0.777 |\n"
        "| HD95 mm, BraTS rule (`test_hd95`) | 8.6 | 9.1 | 107.6 | 41.7 |\n\n"  # rows the file lacks are left out
        "- validation during training (`val_dice`) at epochs 4 / 8: 0.200 / 0.400; at epoch 8: TC 0.500, ET 0.300\n"
    ) in text
    cxr = QUALITY_LUNA | {
        "detail": {
            "summary": {"auroc": 0.75, "sensitivity": 0.5, "specificity": 0.8, "n_test_images": 10,
                        "n_val_images": 4, "threshold_rule": "youden_on_val"},
            "labels": [{"label": "Hernia", "auroc": 0.9876, "sensitivity": 1.0, "specificity": 0.6, "n_positive": 2,
                        "n_negative": 8},
                       {"label": "Fibrosis", "auroc": None, "sensitivity": 0.0, "specificity": 1.0, "n_positive": 0,
                        "n_negative": 10}],
        },
        "validation": {},
    }  # fmt: skip
    text = quality_report.section("cxr14_classification", cxr, {})
    assert (
        "| label (10 test images, `eval/metrics.json`) | test AUROC | sensitivity | specificity "
        "| positives / negatives |\n"
        "|---|---|---|---|---|\n"
        "| Hernia | 0.988 | 1.000 | 0.600 | 2 / 8 |\n"
        "| Fibrosis | - | 0.000 | 1.000 | 0 / 10 |\n"  # AUROC undefined without positives: NaN in the file, None here
        "| **mean** | **0.750** | 0.500 | 0.800 |  |\n\n"
        "- thresholds for sensitivity and specificity: `youden_on_val` (4 validation images)\n"
        "- wall time per step"
    ) in text


def test_quality_check_catches_a_changed_doc_number() -> None:
    """A README holding the rendered block passes; one digit changed in it, or the block gone, is reported with the
    changed line against the rendered one; --write's replacement touches only the block."""
    results = {"bundles": {"luna16_detection": QUALITY_LUNA}}
    expected = {"bundles": {"luna16_detection": QUALITY_LUNA_EXPECTED}}
    doc = f"# LUNA16\n\nprose\n\n{QUALITY_LUNA_BLOCK}\n\nmore prose\n"
    assert quality_report.stale(results, expected, docs={"luna16_detection": doc}) == {}
    changed = doc.replace("| **CPM** | **0.917**", "| **CPM** | **0.964**")
    wrong = quality_report.stale(results, expected, docs={"luna16_detection": changed})
    assert list(wrong) == ["luna16_detection"]
    assert "\n-| **CPM** | **0.964** (95%" in wrong["luna16_detection"]
    assert "\n+| **CPM** | **0.917** (95%" in wrong["luna16_detection"]
    assert (
        "no <!-- quality:begin -->"
        in quality_report.stale(results, expected, docs={"luna16_detection": "# x"})["luna16_detection"]
    )
    old = doc.replace(QUALITY_LUNA_BLOCK, "<!-- quality:begin -->\nhand-written | 0.964\n<!-- quality:end -->")
    assert quality_report.updated("luna16_detection", QUALITY_LUNA, expected, old) == doc


def test_quality_record_reads_the_run_files_and_replaces_only_its_bundles(tmp_path: Path) -> None:
    """``benchmarks.quality --update`` records a bundle's run from its work folder: the evaluation's own files (NaN
    as null), the newest TensorBoard validation curve; a run of one bundle keeps the other bundles' entries."""
    from torch.utils.tensorboard import SummaryWriter

    work = tmp_path / "cxr14_classification"
    (work / "eval" / "tb").mkdir(parents=True)
    label = {"label": "Hernia", "auroc": float("nan"), "val_auroc": 0.5, "threshold": 0.5, "sensitivity": 0.0,
             "specificity": 1.0, "n_positive": 0, "n_negative": 3}  # fmt: skip
    report = {"summary": {"auroc": 0.61234567, "n_test_images": 3}, "labels": [label]}
    (work / "eval" / "metrics.json").write_text(json.dumps(report))  # json writes NaN, as the bundle's report does
    writer = SummaryWriter(str(work / "eval" / "tb"))
    for epoch, value in ((1, 0.5), (2, 0.625)):
        writer.add_scalar("val_mean_auroc", value, epoch)
    writer.close()
    results_file = tmp_path / "quality.json"
    other = {"command": "an earlier run"}
    results_file.write_text(json.dumps({"bundles": {"luna16_detection": other}}))
    run = {"ok": True, "work_dir": str(work), "data": "d", "seconds": {"train": 1.0}, "metrics": {"mean_auroc": 0.6}}
    failed = {"ok": False, "work_dir": str(tmp_path / "brats"), "failed_step": "train"}
    results = {"cxr14_classification": run, "brats_segmentation": failed}
    cmd = "python -m benchmarks.quality --bundles cxr14_classification --update"
    assert quality_report.record(results, MACHINE, cmd, QUALITY_ENV, results_file) == ["cxr14_classification"]
    data = json.loads(results_file.read_text())
    assert set(data["bundles"]) == {"cxr14_classification", "luna16_detection"}
    assert data["bundles"]["luna16_detection"] == other
    entry = data["bundles"]["cxr14_classification"]
    assert entry["detail"]["summary"]["auroc"] == 0.6123 and entry["detail"]["labels"][0]["auroc"] is None
    assert "val_auroc" not in entry["detail"]["labels"][0]
    assert entry["validation"] == {"epochs": [1, 2], "val_mean_auroc": [0.5, 0.625]}
    assert entry["command"] == cmd and entry["env"] == QUALITY_ENV and entry["metrics"] == {"mean_auroc": 0.6}


def _quality_results() -> dict:
    if not QUALITY.is_file():
        pytest.skip(f"{QUALITY.relative_to(ROOT)} not written yet: python -m benchmarks.quality --update")
    return json.loads(QUALITY.read_text())


def test_quality_blocks_agree_with_the_results() -> None:
    expected = json.loads(quality_report.EXPECTED.read_text())
    wrong = quality_report.stale(_quality_results(), expected)
    assert not wrong, "\n".join(wrong.values()) + "\nrun: python -m benchmarks.quality_report --write"


def test_quality_check_fails_on_a_changed_doc_number() -> None:
    """The first measured value of each bundle's checks table with one digit changed in its README: the check
    names that bundle."""
    results = _quality_results()
    expected = json.loads(quality_report.EXPECTED.read_text())
    for bundle in results["bundles"]:
        doc = report.readme(bundle).read_text()
        block = report.block_of(doc, quality_report.BEGIN, quality_report.END)
        assert block, f"{bundle}: no quality block"
        digit = re.search(r"\n\| `[^`]+` \| \d\.\d{3}(\d) \|", block).start(1)
        changed = block[:digit] + str((int(block[digit]) + 1) % 10) + block[digit + 1 :]
        assert list(quality_report.stale(results, expected, docs={bundle: doc.replace(block, changed)})) == [bundle]


def test_quality_check_command_exits_1_on_a_changed_result(tmp_path: Path) -> None:
    results = _quality_results()
    bundle = next(iter(results["bundles"]))
    name = next(iter(results["bundles"][bundle]["metrics"]))
    results["bundles"][bundle]["metrics"][name] += 0.01
    changed = tmp_path / "quality.json"
    changed.write_text(json.dumps(results))
    cmd = [sys.executable, "-m", "benchmarks.quality_report", "--check", "--results"]
    bad = subprocess.run([*cmd, str(changed)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and bundle in bad.stderr, bad.stdout + bad.stderr
    good = subprocess.run([*cmd, str(QUALITY)], cwd=ROOT, capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr


def test_quality_update_writes_the_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m benchmarks.quality --update`` (the run itself replaced by its result) writes the bundle's entry
    with the command as typed, the environment of the run, its finishing time and the detail of its eval files."""
    from benchmarks import quality

    work = tmp_path / "work"
    (work / "luna16_detection" / "eval").mkdir(parents=True)
    froc = {"cpm": 0.5, "sensitivity_at_fp_rates": {"1.0": 0.5}, "n_scans": 2, "curve": {"fps_per_scan": [0.0]}}
    (work / "luna16_detection" / "eval" / "froc.json").write_text(json.dumps(froc))

    def run(bundle: Path, work_dir: Path, env: dict, **_: object) -> dict:
        return {"ok": True, "work_dir": str(work_dir), "data": "d", "seconds": {"train": 1.0}, "metrics": {"cpm": 0.5}}

    monkeypatch.setattr(quality, "run_synthetic", run)
    expected, results = tmp_path / "expected.json", tmp_path / "quality.json"
    expected.write_text(quality.EXPECTED.read_text())
    argv = ["--bundles", "luna16_detection", "--update", "--work_dir", str(work), "--expected", str(expected)]
    assert quality.main([*argv, "--results", str(results)]) == 1  # cpm 0.5 is a regression, recorded all the same
    entry = json.loads(results.read_text())["bundles"]["luna16_detection"]
    assert entry["command"] == "python -m benchmarks.quality " + " ".join([*argv, "--results", str(results)])
    assert entry["env"]["BUNDLES_AMP"] == "0" and entry["env"]["PYTHONHASHSEED"] == "0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", entry["finished_utc"])
    assert entry["detail"] == {k: v for k, v in froc.items() if k != "curve"} and entry["validation"] == {}
    assert json.loads(expected.read_text())["bundles"]["luna16_detection"]["cpm"]["expected"] == 0.5
