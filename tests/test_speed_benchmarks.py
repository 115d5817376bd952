"""The speed benchmarks (benchmarks/speed/) without timing anything: agreement metrics on known cases, the shared
table rows, FLOP counting and fresh-process memory helpers, and one script in --smoke mode (tiny volumes, one
repeat, no memory subprocesses) producing JSON with the expected keys."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed"


def _speed_module(name: str):
    return importlib.import_module(f"benchmarks.speed.{name}")


def test_region_dice_on_a_known_case() -> None:
    agreement = _speed_module("agreement")
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), np.uint8)
    a[0, 0, :4] = 4  # 4 ET voxels
    b[0, 0, :2] = 4  # 2 of them ET in b
    b[0, 0, 2:4] = 1  # the other 2 necrosis: still TC and WT
    a[1, 0, :2] = 2  # 2 edema voxels only in a (WT)
    dice = agreement.region_dice(a, b)
    assert dice["ET"] == pytest.approx(2 * 2 / (4 + 2), abs=1e-4)  # rounded to 5 decimals
    assert dice["TC"] == pytest.approx(1.0)
    assert dice["WT"] == pytest.approx(2 * 4 / (6 + 4))
    assert agreement.region_dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))) == {"TC": 1.0, "WT": 1.0, "ET": 1.0}
    with pytest.raises(ValueError, match="shape"):
        agreement.region_dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_precision_variant_keeps_the_named_parts_in_fp32() -> None:
    """brats_precision's torch variants: the named module and every module of a named type run in fp32 inside the
    bundle's autocast; with all convolutions and norms named, the output is fp32's (bf16 would move it by ~1e-2)."""
    import torch
    from monai.networks.nets import SegResNet

    precision = _speed_module("brats_precision")
    torch.manual_seed(0)
    network = SegResNet(
        spatial_dims=3, init_filters=8, in_channels=4, out_channels=3, blocks_down=[1, 1], blocks_up=[1]
    ).eval()
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        reference = network(x)
    all_fp32 = precision.Variant("torch", "amp", "test", ["conv_final"], ["Conv3d", "GroupNorm"])
    engine = precision.torch_engine(network, all_fp32)
    wrapped = [m for m in network.modules() if type(m).__name__ == "Float32"]
    n_conv_norm = sum(isinstance(m.inner, (torch.nn.Conv3d, torch.nn.GroupNorm)) for m in wrapped)
    assert n_conv_norm == sum(isinstance(m, (torch.nn.Conv3d, torch.nn.GroupNorm)) for m in network.modules()) > 5
    assert type(network.conv_final).__name__ == "Float32"
    with torch.no_grad():
        assert torch.allclose(engine(x), reference, atol=1e-5)


def test_detection_matching_and_auroc_on_known_cases() -> None:
    agreement = _speed_module("agreement")
    ref = {"boxes": [[0, 0, 0, 5, 5, 5], [10, 0, 0, 5, 5, 5], [20, 0, 0, 5, 5, 5]], "scores": [0.9, 0.5, 0.3]}
    ours = {"boxes": [[0.5, 0, 0, 5, 5, 5], [10, 0, 0, 5, 5, 5], [40, 0, 0, 5, 5, 5]], "scores": [0.9, 0.55, 0.3]}
    m = agreement.match_detections(ref, ours)  # 1st matches, 2nd differs in score, 3rd in position
    assert (m["matched"], m["n_reference"], m["n_ours"]) == (1, 3, 3)
    four = {"p": [[0.1], [0.4], [0.35], [0.8]], "y": [[0], [0], [1], [1]]}  # 3 of 4 pairs ordered: 0.75
    assert agreement.mean_auroc(dict(enumerate(four["p"])), dict(enumerate(four["y"]))) == pytest.approx(0.75)
    probs = {"a": [0.9, 0.1], "b": [0.2, 0.3], "c": [0.1, 0.7]}
    labels = {"a": [1, 0], "b": [0, 0], "c": [0, 0]}  # label 2 has no positive: skipped
    assert agreement.mean_auroc(probs, labels) == pytest.approx(1.0)


def test_table_rows_put_speed_ups_and_memory_in_the_shared_columns() -> None:
    report = _speed_module("report")
    infer = {
        "reference": {"median_s": 6.0, "per_image_s": 0.6, "fraction_of_peak": 0.1, "precision": "fp32"},
        "ours": {"median_s": 2.0, "per_image_s": 0.2, "fraction_of_peak": 0.3, "precision": "bf16"},
    }
    train = {
        "reference": {"samples_per_s": 1.0, "fraction_of_peak": 0.05, "precision": "fp32"},
        "ours": {"samples_per_s": 2.5, "fraction_of_peak": 0.15, "precision": "fp32"},
    }
    memory = {"infer_reference": 1000.4, "infer_ours": 800.6, "train_reference": 1500.0}  # train_ours not measured
    # inference: reference time / our time; training: our rate / reference rate
    row = report.inference_row("inf", infer, "ours", 3.0, "ok", memory)
    assert row == ["inf", 6.0, 2.0, 3.0, 3.0, "ok", "1000 / 801", "0.10 fp32 / 0.30 bf16"]
    row = report.inference_row("inf", infer, "ours", 2.5, "ok", None, per="per_image_s")
    assert row[1:4] == [0.6, 0.2, 3.0] and row[6] == "-"
    row = report.training_row("tr", train, "ours", memory)
    assert row == ["tr", 1.0, 2.5, 2.5, 2.0, "-", "1500 / nan", "0.05 fp32 / 0.15 fp32"]
    lines = report.table([report.training_row("tr", train, "ours", {})], agreement="Dice").splitlines()
    assert lines[0] == (
        "| measure | reference | ours | speed-up | target | Dice | peak RSS MB (ref / ours) "
        "| share of the peak in its precision (ref / ours) |"
    )
    assert lines[1] == "|" + "---|" * 8
    assert lines[2] == "| tr | 1 | 2.5 | 2.5 | 2 | - | nan / nan | 0.05 fp32 / 0.15 fp32 |"


def test_each_side_is_measured_against_the_peak_of_its_own_precision() -> None:
    from types import SimpleNamespace

    import torch

    harness = _speed_module("harness")
    timings = {"reference": {"median_s": 2.0}, "ours": {"median_s": 1.0}}
    flops = {"reference": int(4e9), "ours": int(4e9)}
    peaks = {"fp32": {"matmul": 4.0, "conv3d": 10.0}, "bf16": {"matmul": 40.0, "conv3d": 30.0}}  # the faster counts
    harness.set_peak_fractions(timings, flops, peaks, {"reference": "fp32", "ours": "bf16"})
    # 2 GFLOP/s of a 10 GFLOP/s fp32 peak; 4 GFLOP/s of a 40 GFLOP/s bf16 peak (0.4 of the fp32 one)
    assert timings["reference"] == {
        "median_s": 2.0,
        "precision": "fp32",
        "gflops_achieved": 2.0,
        "fraction_of_peak": 0.2,
        "fraction_of_fp32_peak": 0.2,
    }
    assert (timings["ours"]["fraction_of_peak"], timings["ours"]["fraction_of_fp32_peak"]) == (0.1, 0.4)
    assert harness.amp_precision(SimpleNamespace(enabled=False, dtype=torch.bfloat16)) == "fp32"
    assert harness.amp_precision(SimpleNamespace(enabled=True, dtype=torch.bfloat16)) == "bf16"
    with pytest.raises(ValueError, match="float16"):
        harness.amp_precision(SimpleNamespace(enabled=True, dtype=torch.float16))


def test_recorded_command_is_the_one_a_user_types_from_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs show the JSON's command: a script of the repository is recorded as ``-m package.module`` and
    paths inside the repository relative to its root (an absolute path of one clone fails in another), paths
    outside it unchanged."""
    from benchmarks.speed import harness

    root = harness.ROOT
    argv = [str(root / "benchmarks" / "speed" / "brats.py"), "--trained_weights"]
    argv += [str(root / "work_dirs" / "benchmark" / ".." / "benchmark" / "m.pt"), "--out", "/tmp/elsewhere.json"]
    monkeypatch.setattr(sys, "argv", argv)
    expected = ".venv/bin/python -m benchmarks.speed.brats --trained_weights work_dirs/benchmark/m.pt"
    assert harness.command_line() == expected + " --out /tmp/elsewhere.json"


def test_flops_counted_in_the_warm_up_and_peak_memory_in_fresh_children(tmp_path: Path) -> None:
    import argparse

    import torch

    harness = _speed_module("harness")
    a = torch.randn(64, 32)
    sides = {"reference": lambda: (a @ a.T, time.sleep(0.01)), "ours": lambda: time.sleep(0.01)}  # > 1 ms each
    timings, flops = harness.interleaved_with_flops(sides, repeats=1, log=lambda _: None)
    assert flops == {"reference": 2 * 64 * 32 * 64, "ours": 0}
    assert len(timings["reference"]["samples_s"]) == 1 and "median_s" in timings["ours"]

    # a child that fails unless it gets the documented arguments; peak_memory keys its peak RSS <task>_<side>
    child = tmp_path / "child.py"
    child.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom benchmarks.speed import harness\n"
        "a = harness.base_parser('child').parse_args()\n"
        f"assert a.smoke and a.threads == 1 and a.work_dir == {str(tmp_path)!r} and a.child_state.endswith('w.pt')\n"
        "harness.child_report({'child': a.child})\n"
    )
    args = argparse.Namespace(no_memory=False, threads=1, smoke=True)
    logs: list[str] = []
    tasks = {"infer": ["reference", "ours"], "train": ["ours"]}
    memory = harness.peak_memory(child, args, tmp_path, tmp_path / "w.pt", tasks, log=logs.append)
    assert list(memory) == ["infer_reference", "infer_ours", "train_ours"] and min(memory.values()) > 0
    assert logs[0].startswith("  peak RSS infer reference: ") and len(logs) == 3
    args.no_memory = True
    assert harness.peak_memory(child, args, tmp_path, tmp_path / "w.pt", tasks) == {}


def test_brats_speed_script_smoke(tmp_path: Path) -> None:
    out = tmp_path / "speed_brats.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.speed.brats", "--smoke", "--no_memory", "--threads", "1"]
    cmd += ["--work_dir", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=HANG_GUARD, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    for key in (
        "machine",
        "kernel_peaks_gflops",
        "inference",
        "inference_speedup",
        "agreement",
        "training",
        "training_speedup",
        "table_markdown",
        "command",
    ):
        assert key in result, key
    assert result["smoke"] is True
    assert set(result["inference"]) == {"reference", "ours", "ours+torch", "ours+crop", "ours+openvino_int8"}
    int8 = result["inference"]["ours+openvino_int8"]
    assert (int8["precision"], int8["fraction_of_peak"]) == ("int8", None)  # no int8 peak measured, none made up
    peaks = result["kernel_peaks_gflops"]
    assert set(peaks) == {"fp32", "bf16"} and min(v for p in peaks.values() for v in p.values()) > 0
    assert result["inference"]["ours"]["gflop"] == result["inference"]["ours+torch"]["gflop"] > 0
    assert result["inference"]["reference"]["precision"] == "fp32"
    # same weights, same window, fp32 on both sides: the label maps agree and stay in the input's space
    for side in ("ours", "ours+torch"):  # OpenVINO (the default on the CPU) and torch: the same map, same space
        ours = result["agreement"]["random_init_weights"][side]
        assert ours["same_shape_and_affine"] and min(ours["dice"].values()) >= 0.99, side
    assert result["training"]["ours"]["samples_per_s"] > 0


def test_loader_script_smoke(tmp_path: Path) -> None:
    """benchmarks.speed.loader on tiny BraTS cases: every epoch of every loader yields every item, the steady rate is
    the item count over the median of the later epochs, the ratios are against the reference's, the disk cache was
    filled, and the docs lines render from the file."""
    out = tmp_path / "loader_brats.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.speed.loader", "--bundle", "brats", "--smoke", "--epochs", "3"]
    cmd += ["--work_dir", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=HANG_GUARD, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["command"] == f"python -m benchmarks.speed.loader --bundle brats --smoke --epochs 3 --out {out}"
    assert set(r["epoch_seconds"]) == {"reference", "ours", "ours+disk_cache"}
    assert r["items_per_epoch"] == {"reference": 3, "ours": 3, "ours+disk_cache": 3}
    for name, seconds in r["epoch_seconds"].items():
        assert len(seconds) == 2  # --smoke: 2 epochs
        assert r["steady_items_per_s"][name] == pytest.approx(3 / seconds[1], rel=1e-2)
        ratio = r["steady_items_per_s"][name] / r["steady_items_per_s"]["reference"]
        assert r["speedup_vs_reference"][name] == pytest.approx(ratio, abs=0.01)
    assert r["disk"]["cache_bytes"] > 0 and r["disk"]["source_bytes"] > 0
    from benchmarks.speed import report

    table = report.loader_table(r)
    assert table.splitlines()[2].startswith("| reference | 4 |")


def test_foreground_crop_inferer_matches_the_sliding_window_inside_the_brain() -> None:
    """The BraTS crop lever the speed benchmark measures (benchmarks/speed/crop_inferer.py): output in the input's
    shape and metadata, fill value outside the non-zero box, and with no zero border identical to the plain window."""
    import torch
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer

    inferers = _speed_module("crop_inferer")

    net = torch.nn.Conv3d(2, 3, 3, padding=1)
    x = torch.zeros(1, 2, 20, 24, 16)
    x[:, :, 4:13, 6:20, 3:11] = torch.rand(1, 2, 9, 14, 8) + 0.1
    image = MetaTensor(x, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    assert inferers.foreground_box(image) == [slice(4, 13), slice(6, 20), slice(3, 11)]
    assert inferers.foreground_box(image, margin=5) == [slice(0, 18), slice(1, 24), slice(0, 16)]
    assert inferers.foreground_box(torch.zeros(1, 1, 4, 4, 4)) is None
    crop = inferers.ForegroundCropInferer(roi_size=[32, 32, 32], margin=0, k_divisible=1, fill_value=-30.0)
    with torch.no_grad():
        out = crop(image, net)
        full = SlidingWindowInferer(roi_size=[32, 32, 32])(image, net)
    assert out.shape == (1, 3, 20, 24, 16) and torch.equal(out.affine, image.affine)
    assert torch.all(out[:, :, :4] == -30.0) and torch.all(out[:, :, 13:] == -30.0)
    # a 3x3x3 convolution only sees zeros beyond the box, so its interior outputs are the same either way
    torch.testing.assert_close(out[:, :, 5:12, 7:19, 4:10], full[:, :, 5:12, 7:19, 4:10].as_tensor())
    whole = torch.rand(1, 2, 8, 8, 8) + 0.1  # nothing to crop: identical to the plain sliding window
    with torch.no_grad():
        torch.testing.assert_close(crop(whole, net), SlidingWindowInferer(roi_size=[32, 32, 32])(whole, net))


@pytest.mark.parametrize(
    "scan, window", [((512, 512, 280), (192, 192, 80)), ((512, 512, 280), (512, 512, 192)), ((100, 60, 7), (32, 64, 8))]
)
def test_luna16_window_count_is_monais(scan, window) -> None:
    """The projected time of a real-size scan multiplies by the number of windows MONAI's sliding window places."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from benchmarks.speed.luna16_window import OVERLAP, windows_needed

    roi = tuple(min(w, s) for w, s in zip(window, scan))
    interval = _get_scan_interval(scan, roi, 3, (OVERLAP,) * 3)
    assert windows_needed(scan, window) == len(dense_patch_slices(scan, roi, interval))


_LUNA16_OURS_LOADS = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {root!r})
from benchmarks.speed import harness, luna16
state = harness.seeded_state(luna16._scoring_network)
torch.save({{"model": state}}, {weights!r})
from scripts import synthetic
root = synthetic.generate("data", n_scans=1, size=(24, 24, 12), n_subsets=1)
item = {{"seriesuid": "x", "image": str(next(root.glob("subset0/*.mhd")))}}
_, parser = luna16.our_evaluator(item, Path({weights!r}), Path("out"), [64, 64, 32])
net = parser.get_parsed_content("network")
bad = [k for k, v in net.state_dict().items() if not torch.equal(v.float(), state[k].float())]
print("MISMATCH", len(bad), bad[:3])
"""


def test_luna16_speed_ours_runs_the_benchmark_weights(tmp_path: Path) -> None:
    """Both sides of the LUNA16 speed benchmark run the same seeded weights: our side loads them the way the
    bundle's inference ``run`` section does (an override of a stale id once left our network at its own init)."""
    code = _LUNA16_OURS_LOADS.format(root=str(ROOT), weights=str(tmp_path / "w.pt"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=HANG_GUARD
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MISMATCH 0 []" in proc.stdout, proc.stdout[-2000:]


def test_amp_agreement_counts_fp32_boxes_at_each_froc_operating_point(tmp_path: Path) -> None:
    """Thresholds follow the FROC rules (hits on a nodule or an excluded finding are not false positives), and a
    box the other run moved by more than 1 mm is not reproduced."""
    mod = _speed_module("luna16_amp_agreement")
    header = "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
    (tmp_path / "annotations.csv").write_text(header + "a,0,0,0,10\n")
    (tmp_path / "annotations_excluded.csv").write_text(header + "a,50,0,0,-1\n")
    # scan a: a hit (0.9), a hit on the excluded finding (0.8), three false positives (0.7, 0.6, 0.5); scan b: none
    dets = {"a": [[0, 0, 0, 0.9], [50, 0, 0, 0.8], [100, 0, 0, 0.7], [200, 0, 0, 0.6], [300, 0, 0, 0.5]]}
    from benchmarks.scoring import read_findings

    findings = [read_findings(tmp_path / f) for f in ("annotations.csv", "annotations_excluded.csv")]
    thr = mod.false_positive_thresholds(dets, *findings, ["a", "b"])
    # 0.5 FP/scan over 2 scans allows 1 false positive: the threshold lies just above the second (0.6)
    assert thr[0.5] == pytest.approx(0.6) and thr[0.5] > 0.6
    assert thr[1.0] == pytest.approx(0.5) and thr[1.0] > 0.5
    assert thr[0.125] == pytest.approx(0.7) and thr[2.0] == 0.0  # fewer false positives than allowed: every box

    boxes = [[x, y, z, 5, 5, 5] for x, y, z, _ in dets["a"]]
    ref = {"a": {"boxes": boxes, "scores": [d[3] for d in dets["a"]]}}
    moved = [list(b) for b in boxes]
    moved[2][0] += 2.0  # the 0.7 false positive moves 2 mm in the other run
    other = {"a": {"boxes": moved, "scores": [d[3] for d in dets["a"]]}}
    agree = mod.agreement_at_operating_points(ref, other, {0.5: thr[0.5], 1.0: thr[1.0]})
    assert agree["0.5"]["reference_boxes"] == 3 and agree["0.5"]["matched"] == 2  # 0.9, 0.8, 0.7 above 0.6
    assert agree["1.0"]["reference_boxes"] == 4 and agree["1.0"]["matched"] == 3
