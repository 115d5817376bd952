"""LUNA16 FROC/CPM rules (REFERENCE.md section 2) against a second, deliberately naive implementation in this file:
matching by explicit distance loops, the FROC by sweeping every distinct score, the bootstrap by resampling scans
with the same generator. Plus the edges a hand-built case shows best, the CLI and the plot's contents."""

from __future__ import annotations

import json
import logging
import math
import sys

import numpy as np
import pytest

from scripts.froc import FP_RATES, evaluate_froc, main, match_scan, plot_froc, read_predictions

NODULE = [0.0, 0.0, 0.0, 10.0]  # centre (0, 0, 0), radius 5 mm


# ---------------------------------------------------------------- the naive implementation


def naive_match(detections, nodules, excluded) -> tuple[list[float], list[float], int]:
    """Every detection within a nodule's radius is used up by it (the best one is its TP); detections within an
    excluded finding's radius (diameter -1: 10 mm) are ignored; all others are FPs."""
    used = set()
    tps = []
    for *centre, diameter in nodules:
        hits = [i for i, d in enumerate(detections) if math.dist(d[:3], centre) < diameter / 2]
        if hits:
            tps.append(max(detections[i][3] for i in hits))
        used.update(hits)
    for *centre, diameter in excluded:
        radius = 5.0 if diameter < 0 else diameter / 2
        used.update(i for i, d in enumerate(detections) if math.dist(d[:3], centre) < radius)
    fps = [d[3] for i, d in enumerate(detections) if i not in used]
    return tps, fps, len(nodules)


def naive_froc(per_scan) -> tuple[list[float], list[float], list[float]]:
    """One point per distinct score threshold t (predict >= t), highest first, after (0, 0) at t = inf."""
    tps = [s for scan in per_scan for s in scan[0]]
    fps = [s for scan in per_scan for s in scan[1]]
    n_nodules, n_scans = sum(scan[2] for scan in per_scan), len(per_scan)
    curve_fps, curve_sens, thresholds = [0.0], [0.0], [math.inf]
    for t in sorted(set(tps + fps), reverse=True):
        curve_fps.append(sum(s >= t for s in fps) / n_scans)
        curve_sens.append(sum(s >= t for s in tps) / n_nodules if n_nodules else 0.0)
        thresholds.append(t)
    return curve_fps, curve_sens, thresholds


def naive_bootstrap(per_scan, n: int, seed: int) -> tuple[int, list[float], dict[str, list[float]]]:
    """The official procedure: resample scans with replacement, skip resamples without a nodule, 2.5/97.5 %."""
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n):
        sample = [per_scan[i] for i in rng.integers(0, len(per_scan), len(per_scan))]
        if sum(scan[2] for scan in sample):
            fps, sens, _ = naive_froc(sample)
            boot.append(np.interp(FP_RATES, fps, sens))
    arr = np.array(boot)
    cpm = arr.mean(axis=1)
    ci = {str(r): [np.percentile(arr[:, i], 2.5), np.percentile(arr[:, i], 97.5)] for i, r in enumerate(FP_RATES)}
    return len(boot), [np.percentile(cpm, 2.5), np.percentile(cpm, 97.5)], ci


def random_dataset(seed: int, n_scans: int = 8):
    """Scans with nodules (several hits each, some outside the radius), excluded findings (some -1), far FPs, scores
    rounded to 0.1 so that ties across TPs and FPs occur; scan 0 has no nodule, scan 1 no detection."""
    rng = np.random.default_rng(seed)
    nodules, excluded, detections = {}, {}, {}
    for s in range(n_scans):
        uid = f"scan{s}"
        found = [[*rng.uniform(-100, 100, 3), rng.uniform(4, 20)] for _ in range(0 if s == 0 else rng.integers(1, 4))]
        skip = [[*rng.uniform(-100, 100, 3), -1.0 if rng.random() < 0.5 else rng.uniform(3, 8)] for _ in range(2)]
        dets = []
        for *centre, diameter in found + [[*c, 10.0 if d < 0 else d] for *c, d in skip]:
            for _ in range(rng.integers(0, 4)):  # around a finding: inside or just outside its radius
                offset = rng.normal(size=3)
                offset *= rng.uniform(0, 0.7) * diameter / np.linalg.norm(offset)
                dets.append([*(np.array(centre) + offset), round(float(rng.uniform(0, 1)), 1)])
        dets += [[*rng.uniform(-300, -200, 3), round(float(rng.uniform(0, 1)), 1)] for _ in range(rng.integers(0, 5))]
        nodules[uid], excluded[uid] = found, skip
        detections[uid] = [] if s == 1 else [[float(v) for v in d] for d in dets]
    return detections, nodules, excluded


# ---------------------------------------------------------------- against the naive implementation


@pytest.mark.parametrize("seed", range(4))
def test_curve_and_cpm_match_the_naive_implementation(seed: int) -> None:
    detections, nodules, excluded = random_dataset(seed)
    uids = sorted(nodules)
    per_scan = [naive_match(detections[u], nodules[u], excluded[u]) for u in uids]
    fps, sens, thresholds = naive_froc(per_scan)
    r = evaluate_froc(detections, nodules, excluded, uids, n_bootstrap=0)
    assert r["curve"]["fps_per_scan"] == pytest.approx(fps)
    assert r["curve"]["sensitivity"] == pytest.approx(sens)
    assert r["curve"]["threshold"] == pytest.approx(thresholds)
    expected = np.interp(FP_RATES, fps, sens)  # the official script interpolates with np.interp too
    assert list(r["sensitivity_at_fp_rates"]) == ["0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"]
    assert list(r["sensitivity_at_fp_rates"].values()) == pytest.approx(expected.tolist())
    assert r["cpm"] == pytest.approx(expected.mean())
    assert r["n_detected_nodules"] == sum(len(p[0]) for p in per_scan)
    assert r["n_false_positives"] == sum(len(p[1]) for p in per_scan)
    assert r["n_nodules"] == sum(len(v) for v in nodules.values())
    assert r["max_sensitivity"] == pytest.approx(sens[-1])
    assert "bootstrap" not in r


def test_bootstrap_is_the_official_resampling_with_a_fixed_seed() -> None:
    # only 3 of 8 scans have a nodule, so some resamples have none and are skipped: n < 200
    detections, nodules, excluded = random_dataset(7)
    for uid in ("scan2", "scan3", "scan4", "scan6", "scan7"):
        nodules[uid] = []
    uids = sorted(nodules)
    per_scan = [naive_match(detections[u], nodules[u], excluded[u]) for u in uids]
    for seed in (0, 3):
        r = evaluate_froc(detections, nodules, excluded, uids, n_bootstrap=200, seed=seed)
        n, cpm_ci, ci = naive_bootstrap(per_scan, 200, seed)
        assert 150 < n < 200
        assert r["bootstrap"]["n"] == n
        assert r["bootstrap"]["cpm_ci95"] == pytest.approx(cpm_ci)
        assert list(r["bootstrap"]["sensitivity_ci95"]) == list(ci)
        for rate, (lo, hi) in ci.items():
            assert r["bootstrap"]["sensitivity_ci95"][rate] == pytest.approx([lo, hi])


def test_bootstrap_interval_is_the_2_5_to_97_5_percentile() -> None:
    """Many scans and nodules, so the resampled CPMs and sensitivities take many values and the 2.5th percentile
    differs from its neighbours (asserted): the interval's ends are pinned to the 2.5th and 97.5th percentiles."""
    detections, nodules, excluded = random_dataset(11, n_scans=30)
    uids = sorted(nodules)
    per_scan = [naive_match(detections[u], nodules[u], excluded[u]) for u in uids]
    r = evaluate_froc(detections, nodules, excluded, uids, n_bootstrap=300, seed=5)
    rng = np.random.default_rng(5)
    boot = []
    for _ in range(300):
        sample = [per_scan[i] for i in rng.integers(0, len(per_scan), len(per_scan))]
        boot.append(np.interp(FP_RATES, *naive_froc(sample)[:2]))
    boot_arr = np.array(boot)
    cpm = boot_arr.mean(axis=1)
    assert np.percentile(cpm, 2.5) != np.percentile(cpm, 3.5) and np.percentile(cpm, 97.5) != np.percentile(cpm, 98.5)
    assert r["bootstrap"]["cpm_ci95"] == pytest.approx([np.percentile(cpm, 2.5), np.percentile(cpm, 97.5)])
    for i, rate in enumerate(FP_RATES):
        column = boot_arr[:, i]
        if rate == 1.0:
            assert np.percentile(column, 2.5) != np.percentile(column, 3.5)
        expected = [np.percentile(column, 2.5), np.percentile(column, 97.5)]
        assert r["bootstrap"]["sensitivity_ci95"][str(rate)] == pytest.approx(expected)


def test_bootstrap_defaults_are_1000_resamples_with_seed_0() -> None:
    detections, nodules, excluded = random_dataset(1, n_scans=4)
    nodules["scan0"] = [[0.0, 0.0, 0.0, 5.0]]  # every scan has a nodule: every resample counts
    r = evaluate_froc(detections, nodules, excluded)
    per_scan = [naive_match(detections[u], nodules[u], excluded[u]) for u in sorted(nodules)]
    n, cpm_ci, _ = naive_bootstrap(per_scan, 1000, 0)
    assert r["bootstrap"]["n"] == n == 1000
    assert r["bootstrap"]["cpm_ci95"] == pytest.approx(cpm_ci)
    assert r == evaluate_froc(detections, nodules, excluded)  # reproducible


def test_bootstrap_needs_two_scans_and_a_resample_with_a_nodule() -> None:
    one = {"a": [NODULE]}
    dets = {"a": [[0, 0, 0, 0.9], [40, 0, 0, 0.5]], "b": [[0, 0, 0, 0.3]]}
    assert "bootstrap" not in evaluate_froc({"a": dets["a"]}, one, {}, ["a"], n_bootstrap=50)  # one scan
    two = evaluate_froc(dets, {"a": [NODULE], "b": [NODULE]}, {}, ["a", "b"], n_bootstrap=1)
    assert two["bootstrap"]["n"] == 1  # one resample of two scans, both with a nodule
    assert "bootstrap" not in evaluate_froc(dets, {}, {}, ["a", "b"], n_bootstrap=20)  # no nodule anywhere


# ---------------------------------------------------------------- hand-built edges


def test_tied_scores_enter_the_curve_together() -> None:
    # TP 0.9; then at threshold 0.5 an FP and the second nodule's TP at once: no point in between
    nodules = {"a": [NODULE, [30.0, 0, 0, 10.0]]}
    r = evaluate_froc({"a": [[0, 0, 0, 0.9], [30, 0, 0, 0.5], [90, 0, 0, 0.5]]}, nodules, {}, ["a"], n_bootstrap=0)
    assert r["curve"]["fps_per_scan"] == [0.0, 0.0, 1.0]
    assert r["curve"]["sensitivity"] == [0.0, 0.5, 1.0]
    assert r["curve"]["threshold"] == [math.inf, 0.9, 0.5]
    # sensitivity 0.5 up to 0 FP/scan, then linear to 1.0 at 1 FP/scan: 0.5 + 0.5 * rate for rates below 1
    assert list(r["sensitivity_at_fp_rates"].values()) == pytest.approx([0.5625, 0.625, 0.75, 1, 1, 1, 1])


def test_one_scan_fps_per_scan_is_the_fp_count() -> None:
    dets = {"a": [[0, 0, 0, 0.9], [50, 0, 0, 0.8], [60, 0, 0, 0.7]]}
    r = evaluate_froc(dets, {"a": [NODULE]}, {}, ["a"], n_bootstrap=0)
    assert r["curve"]["fps_per_scan"] == [0.0, 0.0, 1.0, 2.0]
    assert r["curve"]["sensitivity"] == [0.0, 1.0, 1.0, 1.0]


def test_max_sensitivity_is_the_last_point_of_the_curve() -> None:
    # sensitivities 0, 1/3, 1/3, 2/3 (FP 0.8 between the TPs 0.9 and 0.7; the third nodule is never hit)
    nodules = {"a": [NODULE, [30.0, 0, 0, 10.0], [60.0, 0, 0, 10.0]]}
    r = evaluate_froc({"a": [[0, 0, 0, 0.9], [90, 0, 0, 0.8], [30, 0, 0, 0.7]]}, nodules, {}, ["a"], n_bootstrap=0)
    assert r["curve"]["sensitivity"] == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3])
    assert r["max_sensitivity"] == pytest.approx(2 / 3)


def test_no_detection_at_all_scores_zero() -> None:
    r = evaluate_froc({}, {"a": [NODULE], "b": []}, n_bootstrap=0)
    assert r["curve"] == {"fps_per_scan": [0.0], "sensitivity": [0.0], "threshold": [math.inf]}
    assert (r["cpm"], r["max_sensitivity"], r["n_scans"], r["n_nodules"]) == (0.0, 0.0, 2, 1)


def test_no_nodule_at_all_scores_zero_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="scripts.froc"):
        r = evaluate_froc({"a": [[0, 0, 0, 0.9]], "b": [[0, 0, 0, 0.4]]}, {}, {}, ["a", "b", "c"], n_bootstrap=0)
    assert r["curve"]["sensitivity"] == [0.0, 0.0, 0.0]
    assert r["curve"]["fps_per_scan"] == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert r["cpm"] == 0.0
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "scripts.froc"]
    assert messages == ["none of the 3 evaluated scans has a nodule: sensitivity and CPM are 0 by definition"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scripts.froc"):
        evaluate_froc({"a": [[0, 0, 0, 0.9]]}, {"b": [NODULE]}, {}, ["a", "b"], n_bootstrap=0)
    assert [rec for rec in caplog.records if rec.name == "scripts.froc"] == []


def test_default_scans_are_every_scan_with_a_nodule_or_a_detection() -> None:
    r = evaluate_froc({"a": [[0, 0, 0, 0.9]], "c": []}, {"b": [NODULE]}, n_bootstrap=0)
    assert r["n_scans"] == 3  # a (FP only), b (missed nodule), c (nothing)
    assert r["curve"]["fps_per_scan"] == pytest.approx([0.0, 1 / 3])
    with pytest.raises(ValueError, match="^no scans to evaluate$"):
        evaluate_froc({}, {}, n_bootstrap=0)


def test_excluded_findings_are_honoured_by_evaluate_froc() -> None:
    dets = {"a": [[0, 0, 0, 0.9], [50, 0, 0, 0.8], [100, 0, 0, 0.7]]}
    excluded = {"a": [[50.0, 0, 0, 4.0], [103.0, 0, 0, -1.0]]}  # both extra detections are on excluded findings
    r = evaluate_froc(dets, {"a": [NODULE]}, excluded, ["a"], n_bootstrap=0)
    assert r["n_false_positives"] == 0 and r["curve"]["fps_per_scan"] == [0.0, 0.0]
    assert evaluate_froc(dets, {"a": [NODULE]}, None, ["a"], n_bootstrap=0)["n_false_positives"] == 2


def test_only_a_negative_excluded_diameter_means_10mm_and_the_radius_is_strict() -> None:
    # a 0.5 mm finding covers 0.25 mm, a 0 mm finding nothing; 2.0 mm from a 4 mm finding is on its edge: not inside
    dets = [[0.3, 0, 0, 0.9], [50.0, 0, 0, 0.8], [102.0, 0, 0, 0.7], [201.9, 0, 0, 0.6]]
    excluded = [[0.0, 0, 0, 0.5], [50.0, 0, 0, 0.0], [100.0, 0, 0, 4.0], [200.0, 0, 0, 4.0]]
    tp, fp, n = match_scan(dets, [], excluded)
    assert tp == [] and fp == [0.9, 0.8, 0.7] and n == 0


def test_unknown_scans_are_named() -> None:
    dets = {uid: [[0, 0, 0, 0.5]] for uid in ("z", "y", "x", "w", "a")}
    message = r"^detections for 4 seriesuid\(s\) not in the evaluated scans, e\.g\. \['w', 'x', 'y'\]$"
    with pytest.raises(ValueError, match=message):
        evaluate_froc(dets, {"a": [NODULE]}, {}, ["a"], n_bootstrap=0)


def test_bad_submission_header_is_named(tmp_path) -> None:
    (tmp_path / "sub.csv").write_text("seriesuid,x,y,z,probability\na,1,2,3,0.5\n")
    expected = r"sub\.csv: header must have \['coordX', 'coordY', 'coordZ', 'probability', 'seriesuid'\], found \['seriesuid', 'x', 'y', 'z', 'probability'\]"  # noqa: E501
    with pytest.raises(ValueError, match=expected):
        read_predictions(tmp_path / "sub.csv")


# ---------------------------------------------------------------- the command line


def _write_inputs(tmp_path) -> list[str]:
    (tmp_path / "ann.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,10\na,30,0,0,10\nb,0,0,0,10\nskipped,0,0,0,10\n"
    )
    (tmp_path / "exc.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,60,0,0,-1\n")
    (tmp_path / "pred.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,probability\na,0,0,0,0.9\na,62,0,0,0.8\na,90,0,0,0.6\nb,0,0,0,0.7\n"
    )
    (tmp_path / "uids.txt").write_text("a\nb\nc\n")  # c: neither a nodule nor a detection, still a scan
    return ["--annotations", str(tmp_path / "ann.csv"), "--predictions", str(tmp_path / "pred.csv")]


def test_cli_scores_the_listed_scans_and_writes_json_and_png(tmp_path, monkeypatch, capsys) -> None:
    args = _write_inputs(tmp_path)
    extra = ["--excluded", str(tmp_path / "exc.csv"), "--seriesuids", str(tmp_path / "uids.txt")]
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["froc", *args, *extra, "--out_dir", str(out), "--n_bootstrap", "0"])
    main()
    # scans a, b, c (the "skipped" scan is not listed): 3 nodules; TPs 0.9 and 0.7, the 0.8 hit is on the excluded
    # finding, FP 0.6 -> curve (0,0) (0,1/3) (0,2/3) (1/3,2/3): sensitivity 2/3 at every rate
    result = json.loads((out / "froc.json").read_text())
    assert (result["n_scans"], result["n_nodules"], result["n_false_positives"]) == (3, 3, 1)
    assert result["curve"]["fps_per_scan"] == pytest.approx([0, 0, 0, 1 / 3])
    assert result["cpm"] == pytest.approx(2 / 3)
    assert "bootstrap" not in result
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = {k: result[k] for k in ("cpm", "sensitivity_at_fp_rates", "n_scans", "n_nodules")}
    assert capsys.readouterr().out == json.dumps(summary, indent=1) + "\n"


def test_cli_defaults_every_scan_official_bootstrap_current_directory(tmp_path, monkeypatch) -> None:
    args = _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["froc", *args])
    main()
    result = json.loads((tmp_path / "froc.json").read_text())
    # every annotated scan, no excluded findings: the 0.8 detection is an FP now, "skipped" adds a missed nodule
    assert (result["n_scans"], result["n_nodules"], result["n_false_positives"]) == (3, 4, 2)
    assert result["bootstrap"]["n"] == 1000
    assert (tmp_path / "froc.png").is_file()


@pytest.mark.parametrize("drop", ["--annotations", "--predictions"])
def test_cli_requires_annotations_and_predictions(tmp_path, monkeypatch, drop: str) -> None:
    args = _write_inputs(tmp_path)
    i = args.index(drop)
    monkeypatch.setattr(sys, "argv", ["froc", *args[:i], *args[i + 2 :], "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        main()
    assert not (tmp_path / "froc.json").exists()


# ---------------------------------------------------------------- the plot shows the numbers


def _figure_of(monkeypatch, result, path, **kwargs):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_froc(result, path, **kwargs)
    monkeypatch.undo()
    assert len(figures) == 1
    return figures[0]


def test_plot_shows_curve_operating_points_and_ci(tmp_path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    detections, nodules, excluded = random_dataset(2)
    r = evaluate_froc(detections, nodules, excluded, n_bootstrap=50)
    fig = _figure_of(monkeypatch, r, tmp_path / "froc.png")
    try:
        ax = fig.axes[0]
        curve, points = ax.lines
        fps, sens = np.array(r["curve"]["fps_per_scan"]), np.array(r["curve"]["sensitivity"])
        np.testing.assert_allclose(curve.get_xdata(), fps[fps > 0])  # no point at 0 on a log axis
        np.testing.assert_allclose(curve.get_ydata(), sens[fps > 0])
        assert (curve.get_linestyle(), curve.get_marker()) == ("-", "None")
        np.testing.assert_allclose(points.get_xdata(), FP_RATES)
        np.testing.assert_allclose(points.get_ydata(), list(r["sensitivity_at_fp_rates"].values()))
        assert (points.get_linestyle(), points.get_marker()) == ("None", "o")
        (band,) = ax.collections
        vertices = {tuple(np.round(v, 9)) for v in band.get_paths()[0].vertices}
        for rate, (lo, hi) in r["bootstrap"]["sensitivity_ci95"].items():
            x = round(float(rate), 9)
            assert (x, round(lo, 9)) in vertices and (x, round(hi, 9)) in vertices
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == ["FROC", "official FP rates", "95% CI (bootstrap)"]
        assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
        assert ax.get_xlim() == (0.1, 10) and ax.get_ylim() == (0, 1.02)
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("average false positives per scan", "sensitivity")
        assert ax.get_title() == f"LUNA16 FROC: CPM {r['cpm']:.3f} (8 scans, {r['n_nodules']} nodules)"
    finally:
        plt.close(fig)
    assert (tmp_path / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_bootstrap_has_no_band_and_takes_a_title(tmp_path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    r = evaluate_froc({"a": [[0, 0, 0, 0.9], [50, 0, 0, 0.2]]}, {"a": [NODULE]}, {}, ["a"], n_bootstrap=0)
    fig = _figure_of(monkeypatch, r, tmp_path / "f.png", title="fold 0")
    try:
        ax = fig.axes[0]
        assert list(ax.collections) == []
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FROC", "official FP rates"]
        assert ax.get_title() == "fold 0: CPM 1.000 (1 scans, 1 nodules)"
    finally:
        plt.close(fig)
