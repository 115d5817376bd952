"""The bundle docs' measured numbers are the results files' (issues 14 and 19): the folds / ensembles / TTA blocks
are what ``benchmarks/ensemble_report.py`` renders from ``benchmarks/results/ensemble.json``, and the speed blocks
show the numbers of ``benchmarks/results/speed_*.json`` as ``benchmarks/speed/report.py`` renders them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import ensemble_report
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
