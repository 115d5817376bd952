"""Each LUNA16 FROC rule pinned with hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.froc import evaluate_froc, match_scan, plot_froc, read_predictions, sensitivities_at
from scripts.handlers import write_submission

NODULE = [0.0, 0.0, 0.0, 10.0]  # centre (0, 0, 0), radius 5 mm


def test_double_hit_counts_once_with_highest_score() -> None:
    tp, fp, n = match_scan([[1, 0, 0, 0.4], [0, 2, 0, 0.9], [0, 0, 3, 0.6]], [NODULE])
    assert tp == [0.9] and fp == [] and n == 1


def test_hit_requires_distance_strictly_below_radius() -> None:
    tp, fp, _ = match_scan([[5.0, 0, 0, 0.8], [4.99, 0, 0, 0.3]], [NODULE])
    assert tp == [0.3] and fp == [0.8]


def test_hits_on_excluded_findings_are_ignored_and_minus_one_means_10mm() -> None:
    excluded = [[50.0, 0, 0, 4.0], [100.0, 0, 0, -1.0]]
    dets = [[51.0, 0, 0, 0.9], [53.0, 0, 0, 0.8], [104.0, 0, 0, 0.7], [106.0, 0, 0, 0.6]]
    tp, fp, n = match_scan(dets, [], excluded)
    # 51 is inside the 4 mm finding (radius 2); 53 is not; 104 is inside the "-1 = 10 mm" finding; 106 is not
    assert tp == [] and sorted(fp) == [0.6, 0.8] and n == 0


def test_detection_inside_two_overlapping_nodules_counts_for_both() -> None:
    tp, fp, n = match_scan([[2.0, 0, 0, 0.9]], [NODULE, [4.0, 0, 0, 10.0]])
    assert tp == [0.9, 0.9] and fp == [] and n == 2


def test_fps_divide_by_all_scans_including_those_without_nodules() -> None:
    nodules = {"a": [NODULE]}
    detections = {"a": [[0, 0, 0, 0.9]], "b": [[0, 0, 0, 0.5]]}  # "b" has no nodule: its detection is an FP
    r = evaluate_froc(detections, nodules, {}, ["a", "b", "c", "d"], n_bootstrap=0)
    assert r["n_scans"] == 4 and r["n_false_positives"] == 1
    # the one FP over 4 scans is 0.25 FP/scan; the nodule was found at a higher score, so sensitivity is 1 everywhere
    assert r["curve"]["fps_per_scan"][-1] == pytest.approx(0.25)
    assert r["sensitivity_at_fp_rates"]["0.125"] == pytest.approx(1.0)
    assert r["cpm"] == pytest.approx(1.0)


def test_never_hit_nodules_cap_sensitivity() -> None:
    nodules = {"a": [NODULE, [100.0, 0, 0, 8.0]]}
    r = evaluate_froc({"a": [[0, 0, 0, 0.9], [50, 50, 50, 0.1]]}, nodules, {}, ["a"], n_bootstrap=0)
    assert r["max_sensitivity"] == pytest.approx(0.5)
    assert r["cpm"] == pytest.approx(0.5)


def test_cpm_by_hand() -> None:
    # 2 scans, 4 nodules. Sorted detections: FP 0.95, TP 0.9, FP 0.8, TP 0.7, FP 0.6, FP 0.5, FP 0.4
    nodules = {"a": [NODULE, [30.0, 0, 0, 10.0]], "b": [NODULE, [60.0, 0, 0, 10.0]]}
    dets = {
        "a": [[0, 0, 0, 0.9], [90, 0, 0, 0.95], [90, 9, 0, 0.6], [90, 20, 0, 0.4]],
        "b": [[60, 0, 0, 0.7], [90, 0, 0, 0.8], [90, 10, 0, 0.5]],
    }
    r = evaluate_froc(dets, nodules, {}, ["a", "b"], n_bootstrap=0)
    fps, sens = r["curve"]["fps_per_scan"], r["curve"]["sensitivity"]
    assert fps == pytest.approx([0, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0, 2.5])
    assert sens == pytest.approx([0, 0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5])
    # np.interp on non-decreasing fps: at 0.5 the last point with fps 0.5 (sens 0.25) wins; at 1.0 -> 0.5
    expected = np.interp([0.125, 0.25, 0.5, 1, 2, 4, 8], fps, sens)
    assert list(r["sensitivity_at_fp_rates"].values()) == pytest.approx(expected.tolist())
    assert expected[0] == pytest.approx(0.0) and expected[-1] == pytest.approx(0.5)
    assert r["cpm"] == pytest.approx(expected.mean())


def test_interpolation_beyond_curve_keeps_last_sensitivity() -> None:
    assert sensitivities_at(np.array([0, 0.5]), np.array([0, 0.8]), [1, 8]).tolist() == [0.8, 0.8]


def test_bootstrap_ci_brackets_cpm(tmp_path) -> None:
    rng = np.random.default_rng(0)
    nodules, dets = {}, {}
    for i in range(12):
        uid = f"s{i}"
        nodules[uid] = [[0.0, 0.0, 0.0, 8.0]] if i % 3 else []
        dets[uid] = [[0.0, 0.0, 0.0, float(rng.uniform(0.3, 1))] for _ in range(1 if i % 3 else 0)]
        dets[uid] += [[50.0, 0.0, 0.0, float(rng.uniform(0, 0.8))] for _ in range(2)]
    r = evaluate_froc(dets, nodules, {}, sorted(nodules), n_bootstrap=200)
    lo, hi = r["bootstrap"]["cpm_ci95"]
    assert 0 <= lo <= r["cpm"] <= hi <= 1 and hi > lo
    png = plot_froc(r, tmp_path / "froc.png")
    assert png.stat().st_size > 1000


def test_submission_csv_round_trip_and_unknown_scan_rejected(tmp_path) -> None:
    dets = {"a": [[1.5, -2.25, 3.0, 0.5]], "b": []}
    path = write_submission(dets, tmp_path / "sub.csv")
    assert path.read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,probability"
    assert read_predictions(path) == {"a": [[1.5, -2.25, 3.0, 0.5]]}
    with pytest.raises(ValueError, match="not in the evaluated scans"):
        evaluate_froc({"zzz": [[0, 0, 0, 1]]}, {"a": [NODULE]}, {}, ["a"], n_bootstrap=0)
    (tmp_path / "bad.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\na,1,2,x,0.5\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        read_predictions(tmp_path / "bad.csv")
