"""A failed run ends with its cause: the bundle's own error (file, problem, fix) is the last line printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import BundleRootError, check_bundle_root, last_line, root_cause
from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]


def _train(cwd: Path, pythonpath: list[Path], *args: str) -> tuple[int, str, list[str]]:
    """``python -m monai.bundle run training *args`` in ``cwd``: exit status, stderr and its non-empty lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    return proc.returncode, proc.stderr, [line for line in proc.stderr.splitlines() if line.strip()]


def _chain() -> RuntimeError:
    try:
        try:
            raise ValueError("/data/x.nii.gz: file not found\n(download the case again)")
        except ValueError as inner:
            raise KeyError("while loading") from inner
    except KeyError:  # raised while handling, without "from": the context is the chain
        try:
            raise RuntimeError("Failed to evaluate ConfigExpression")
        except RuntimeError as outer:
            return outer


def test_root_cause_follows_cause_and_context() -> None:
    exc = _chain()
    cause = root_cause(exc)
    assert isinstance(cause, ValueError) and str(cause).startswith("/data/x.nii.gz")
    assert last_line(exc) == "Error: ValueError: (download the case again)"
    assert last_line(ValueError("alone")) is None  # nothing to repeat: the traceback already ends with it


def test_suppressed_context_is_not_followed() -> None:
    try:
        try:
            raise ValueError("hidden")
        except ValueError:
            raise RuntimeError("shown") from None
    except RuntimeError as e:
        assert root_cause(e) is e


@pytest.mark.parametrize(
    "bundle, error",
    [
        ("brats_segmentation", "BratsInputError"),
        ("cxr14_classification", "DatasetLayoutError"),
        ("luna16_detection", "LunaDataError"),
    ],
)
def test_training_on_a_missing_folder_ends_with_the_bundle_error(bundle: str, error: str, tmp_path: Path) -> None:
    """``python -m monai.bundle run training`` on a dataset folder that does not exist: MONAI wraps the error in
    ``RuntimeError: Failed to evaluate ConfigExpression``; the last line must be the bundle's own message."""
    missing = tmp_path / "no_such_dataset"
    code, stderr, lines = _train(
        ROOT / "bundles" / bundle,
        [ROOT],
        *("--config_file", "configs/train.json", "--dataset_dir", str(missing), "--bundle_root", str(tmp_path / "run")),
    )
    assert code != 0
    assert lines[-1].startswith(f"Error: {error}: {missing}"), lines[-5:]
    assert "Failed to evaluate" in stderr  # MONAI's wrapper is still there, above


def test_bundle_root_must_be_a_bundle_when_it_is_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleRootError, match=str(tmp_path)):
        check_bundle_root(".")
    assert check_bundle_root(str(tmp_path / "runs" / "a"))  # an explicit folder for the outputs is always fine
    monkeypatch.chdir(ROOT / "bundles" / "luna16_detection")
    assert check_bundle_root(".")


def test_a_command_started_outside_the_bundle_writes_nothing(tmp_path: Path) -> None:
    """The README's commands run from the bundle directory; one started elsewhere with the default bundle_root
    once trained and wrote ``models/`` and ``eval/`` into that folder (the repository root)."""
    bundle = ROOT / "bundles" / "brats_segmentation"
    config, data = str(bundle / "configs" / "train.json"), str(tmp_path / "data")
    code, _, lines = _train(tmp_path, [bundle, ROOT], "--config_file", config, "--dataset_dir", data)
    assert code != 0 and lines[-1].startswith(f"Error: BundleRootError: {tmp_path}"), lines[-5:]
    assert list(tmp_path.iterdir()) == []
