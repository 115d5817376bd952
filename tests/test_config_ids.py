"""tools/config_ids.py: the overridable settings of layered config files, as a user would pass them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import HANG_GUARD
from tools.config_ids import settings

ROOT = Path(__file__).resolve().parents[1]
BRATS = ROOT / "bundles" / "brats_segmentation" / "configs"


def test_later_files_override_and_wiring_is_left_out(tmp_path: Path) -> None:
    base = {
        "imports": ["$import os"],
        "epochs": 300,
        "roi_size": [224, 224, 144],
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "SegResNet", "init_filters": 16},
        "transforms": [{"_target_": "LoadImaged"}],
        "training": ["$print('x')", "$@trainer.run()"],
        "names": ["TC", "WT", "ET"],
    }
    over = {"epochs": 16, "network_def#init_filters": 8}
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(over))
    found = settings([tmp_path / "a.json", tmp_path / "b.json"])
    assert found == {
        "epochs": (16, "b.json"),
        "roi_size": ([224, 224, 144], "a.json"),
        "device": ("$torch.device('cpu')", "a.json"),
        "names": (["TC", "WT", "ET"], "a.json"),
        "network_def#init_filters": (8, "b.json"),
    }


def test_the_readme_command_lists_the_demo_schedule() -> None:
    cmd = [sys.executable, str(ROOT / "tools" / "config_ids.py"), "configs/train.json", "configs/demo.json"]
    proc = subprocess.run(cmd, cwd=BRATS.parent, capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr
    demo = json.loads((BRATS / "demo.json").read_text())
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    plain = {k: v for k, v in demo.items() if not isinstance(v, dict)}  # components (train_crop) are wiring
    assert len(plain) >= 8
    for key, value in plain.items():  # every demo setting shows the demo's value, attributed to demo.json
        assert lines[f"--{key}"].endswith("[demo.json]"), lines[f"--{key}"]
        assert json.dumps(value)[:60] in lines[f"--{key}"]
    assert "--initialize" not in lines and "--imports" not in lines


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "tools" / "config_ids.py"), str(tmp_path / "nope.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode != 0 and f"{tmp_path / 'nope.json'}: config file not found" in proc.stderr
