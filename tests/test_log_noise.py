"""A run whose output goes to a file or a pipe (CI, MONAI Label's server log, ``| tee``) logs what happened, not a
terminal's progress redraws."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from monai.bundle import ConfigParser

from common.checkpoint import atomic_save
from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]
CXR14 = ROOT / "bundles" / "cxr14_classification"


def test_evaluation_into_a_pipe_draws_no_progress_bars(tmp_path: Path) -> None:
    """CXR14's documented evaluation (demo network, seeded random weights, 64 px) with stderr a pipe: no carriage
    return anywhere. Its test set's ``CacheDataset`` once drew MONAI's default ``Loading dataset`` bar regardless
    (``configs/evaluate.json`` lacked the ``progress`` setting every other cache has)."""
    from conftest import activate_bundle

    activate_bundle(CXR14)
    from scripts.synthetic import generate

    data = generate(tmp_path / "data", n_patients=14, size=64, seed=5)
    configs = [str(CXR14 / "configs" / f) for f in ("train.json", "evaluate.json", "demo.json")]
    parser = ConfigParser()
    parser.read_config(configs)
    parser.get_parsed_content("imports")
    network = parser.get_parsed_content("network_def", instantiate=True)
    run = tmp_path / "run"
    atomic_save({"model": network.state_dict(), "info": {"bundle": CXR14.name}}, run / "models" / "model.pt")
    env = {k: v for k, v in os.environ.items() if k != "BUNDLES_PROGRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", str(configs)]
        + ["--dataset_dir", str(data), "--bundle_root", str(run), "--image_size", "64"],
        cwd=CXR14,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,  # bytes: text mode would turn every carriage return into a newline
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:].decode(errors="replace")
    assert (run / "eval" / "metrics.json").is_file()  # the test set was evaluated
    for name, output in (("stderr", proc.stderr), ("stdout", proc.stdout)):
        redraws = [line for line in output.decode(errors="replace").split("\n") if "\r" in line]
        assert not redraws, (name, redraws[:3])
