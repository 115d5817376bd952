"""benchmarks/ensemble.py's averaging over training seeds: the mean and sample standard deviation of every figure,
nested figures (LUNA16's per-fusion scores, the cost's multipliers) alike, against a by-hand computation."""

from __future__ import annotations

import math

import pytest

from benchmarks.ensemble import across_seeds, summary


def _run(seed: int, dice: float, cpm_wbf: float, cpm_nms: float, multiplier: float) -> dict:
    mode = {"test_dice": dice, "per_fold": [{"test_dice": dice}]}
    fused = {"cpm": cpm_wbf, "fusion": {"wbf": {"cpm": cpm_wbf}, "nms": {"cpm": cpm_nms}}}
    return {
        "single": mode,
        "tta": mode,
        "ensemble": fused,
        "ensemble_tta": fused,
        "cost": {"multiplier": {"single": 1.0, "tta": multiplier}, "scans": 4},
        "fusion_default": "wbf",
        "cli_check": {"single_fold0": {"agree": True}},
        "protocol": f"Small scale. Folds, training seed {seed}. fp32.",
        "machine": {"cpus": 2},
    }


def test_mean_and_sample_sd_over_seeds_nested_alike() -> None:
    out = across_seeds([{"a": 0.2, "f": {"b": 1.0}}, {"a": 0.4, "f": {"b": 3.0}}, {"a": 0.9, "f": {"b": 8.0}}])
    assert out["a"] == pytest.approx(0.5, abs=1e-4)
    sd = math.sqrt(((0.2 - 0.5) ** 2 + (0.4 - 0.5) ** 2 + (0.9 - 0.5) ** 2) / 2)  # n - 1
    assert out["sd"]["a"] == pytest.approx(sd, abs=1e-4)
    assert out["f"]["b"] == pytest.approx(4.0) and out["f"]["sd"]["b"] == pytest.approx(math.sqrt(13.0), abs=1e-4)
    assert out["per_seed"] == [{"a": 0.2}, {"a": 0.4}, {"a": 0.9}]


def test_one_seed_has_no_spread() -> None:
    out = across_seeds([{"a": 0.3}])
    assert out == {"a": 0.3, "per_seed": [{"a": 0.3}]}


def test_bundle_entry_orders_seeds_numerically_and_picks_the_better_fusion_from_the_means() -> None:
    runs = {"10": _run(10, 0.5, 0.60, 0.70, 9.0), "2": _run(2, 0.7, 0.80, 0.65, 7.0)}
    entry = summary("luna16_detection", runs)
    assert entry["seeds"] == [2, 10]
    assert entry["single"]["per_seed"] == [{"test_dice": 0.7}, {"test_dice": 0.5}]
    assert entry["single"]["test_dice"] == pytest.approx(0.6)
    # wbf 0.70 on average against nms 0.675, although nms wins for seed 10
    assert entry["fusion_better_on_ensemble_tta"] == "wbf"
    assert entry["cost"]["multiplier"]["tta"] == pytest.approx(8.0)
    assert entry["cli_check_agree"] is True
    assert "training seed 2" not in entry["protocol"] and "Mean over 2 training seed(s) [2, 10]" in entry["protocol"]
    assert list(entry["runs"]) == ["2", "10"]


def test_a_run_with_disturbed_timings_keeps_its_scores_and_leaves_the_costs() -> None:
    """A seed whose timings were disturbed (job paused during its timed passes) is marked ``cost_invalid``: its
    scores enter the means, its costs do not, and the entry says which seeds the costs hold."""
    runs = {"1": _run(1, 0.5, 0.60, 0.70, 9.0), "0": _run(0, 0.7, 0.80, 0.65, 3.0)}
    runs["0"]["cost_invalid"] = "paused for 5 min during its passes"
    entry = summary("luna16_detection", runs)
    assert entry["single"]["test_dice"] == pytest.approx(0.6)  # both seeds' scores
    assert entry["cost"]["multiplier"]["tta"] == pytest.approx(9.0)  # seed 1's cost only
    assert entry["cost_seeds"] == [1] and entry["cost_excluded"] == {"0": "paused for 5 min during its passes"}
    clean = summary("luna16_detection", {"1": _run(1, 0.5, 0.60, 0.70, 9.0)})
    assert "cost_seeds" not in clean and "cost_excluded" not in clean


class _AfterTraining(Exception):
    pass


@pytest.mark.parametrize("bundle", ["brats_segmentation", "cxr14_classification", "luna16_detection"])
def test_each_seed_trains_with_its_own_training_seed(bundle: str, tmp_path, monkeypatch) -> None:
    """Every fold of seed s is trained with ``--seed s`` into ``seed<s>/`` (the data generators keep their own
    seeds): a seed that does not reach training makes every "seed" the same run and the spread a false 0."""
    import argparse

    import benchmarks.ensemble as ens

    commands: list[list[str]] = []

    def record(cmd, cwd, env, log):
        commands.append(cmd)
        if "training" in cmd or "scripts.synthetic" in cmd:
            return 0.0
        raise _AfterTraining

    def stop(*args, **kwargs):
        raise _AfterTraining

    monkeypatch.setattr(ens, "run", record)
    monkeypatch.setattr(ens, "luna16_passes", stop)
    args = argparse.Namespace(work_dir=str(tmp_path), folds=2, retrain=False, n_cases=8, size=[32, 32, 32],
                              val_roi_size=[32, 32, 32], epochs=1, val_interval=1, cxr_n_patients=10, cxr_size=64,
                              cxr_epochs=1, luna16_n_scans=4, luna16_test_scans=2, luna16_size=[32, 32, 16],
                              luna16_folds=2, luna16_epochs=1, luna16_val_interval=1)  # fmt: skip
    for seed in (7, 11):
        commands.clear()
        with pytest.raises(_AfterTraining):
            ens.BENCHMARKS[bundle](args, seed)
        training = [c for c in commands if "training" in c]
        assert len(training) == 2, commands
        for cmd in training:
            assert cmd[cmd.index("--seed") + 1] == str(seed), cmd
            assert cmd[cmd.index("--bundle_root") + 1] == str(tmp_path.resolve() / bundle / f"seed{seed}"), cmd


def test_networks_benchmark_pairs_each_seed_with_the_default_of_the_same_settings() -> None:
    """benchmarks.networks compares an alternative network with the default's fold 0 of the SAME seed and
    settings in ensemble.json; another seed, other settings or a run of another bundle version (another twin) are
    refused, not silently compared."""
    import json

    from benchmarks.ensemble import ROOT, build_parser, run_settings
    from benchmarks.networks import default_fold0, with_override

    assert with_override("['configs/train.json','configs/demo.json']", "configs/network_unet.json") == (
        "['configs/train.json','configs/demo.json','configs/network_unet.json']"
    )
    assert with_override("['configs/train.json']", None) == "['configs/train.json']"
    args = build_parser().parse_args([])
    settings = run_settings(args, "brats_segmentation")
    metadata = json.loads((ROOT / "bundles" / "brats_segmentation" / "configs" / "metadata.json").read_text())
    assert settings["bundle_version"] == metadata["version"] and settings["epochs"] == args.epochs
    fold = [{"test_dice": 0.3 + s / 10} for s in range(3)]
    runs = {str(s): {"settings": settings, "single": {"per_fold": [fold[s], {"test_dice": 0.0}]}} for s in (0, 1)}
    ensemble = {"brats_segmentation": {"runs": runs}}
    assert default_fold0(ensemble, "brats_segmentation", args, [1, 0]) == [fold[1], fold[0]]
    with pytest.raises(SystemExit, match=r"no run of seed\(s\) \[2\]"):
        default_fold0(ensemble, "brats_segmentation", args, [0, 2])
    other = build_parser().parse_args(["--epochs", "7"])
    with pytest.raises(SystemExit, match="seed 0 was measured with"):
        default_fold0(ensemble, "brats_segmentation", other, [0])
    runs["0"]["settings"] = settings | {"bundle_version": "0.0.1"}  # measured on an older twin
    with pytest.raises(SystemExit, match="seed 0 was measured with"):
        default_fold0(ensemble, "brats_segmentation", args, [0])
