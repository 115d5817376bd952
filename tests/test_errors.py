"""A failed run ends with its cause: the bundle's own error (file, problem, fix) is the last line printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import MISMATCH_HINT, CheckpointError, atomic_save, load_checkpoint
from common.errors import BundleRootError, check_bundle_root, last_line, root_cause
from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]


def _run(cwd: Path, pythonpath: list[Path], *args: str) -> tuple[int, str, list[str]]:
    """``python -m monai.bundle run *args`` in ``cwd``: exit status, stderr and its non-empty lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
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


def test_without_an_error_of_ours_the_innermost_cause_is_shown() -> None:
    """Errors raised outside the bundles, ``common`` and ``tools`` (here: by this test module): the innermost one,
    by its last line, as before."""
    exc = _chain()
    cause = root_cause(exc)
    assert isinstance(cause, ValueError) and str(cause).startswith("/data/x.nii.gz")
    assert last_line(exc) == "Error: ValueError: (download the case again)"
    assert last_line(ValueError("alone")) is None  # nothing to repeat: the traceback already ends with it


def test_our_error_is_shown_not_the_library_error_it_was_raised_from(tmp_path: Path) -> None:
    """A checkpoint of another size: torch's ``size mismatch`` is the innermost error, the ``CheckpointError``
    naming the file and the fix (raised from it by common.checkpoint) is what the last line shows, whole. Loaded
    as every bundle's ``run`` list does, so MONAI's ``Failed to evaluate ConfigExpression`` is on top."""
    from monai.bundle import ConfigParser

    path = atomic_save({"model": torch.nn.Linear(4, 2).state_dict()}, tmp_path / "other.pt")
    parser = ConfigParser(
        {
            "imports": ["$import common", "$import common.checkpoint"],
            "net": {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2},
            "load": f"$common.checkpoint.load_weights(@net, {str(path)!r})",
        }
    )
    parser.get_parsed_content("imports")
    with pytest.raises(RuntimeError, match="Failed to evaluate") as info:
        parser.get_parsed_content("load")
    exc = info.value
    cause = root_cause(exc)
    assert isinstance(cause, CheckpointError) and isinstance(cause.__cause__, RuntimeError)  # torch's, below it
    line = last_line(exc)
    assert line == f"Error: CheckpointError: {cause}" and "\n" not in line
    assert line.startswith(f"Error: CheckpointError: {path}: weights do not fit this Linear") and line.endswith(
        MISMATCH_HINT
    )
    assert "1 tensors of another shape (first weight: [2, 4] in the file, [2, 3] in the network)" in line


def test_an_error_of_ours_in_a_dataloader_worker_is_shown(tmp_path: Path) -> None:
    """A worker's error reaches the main process as text (``Caught RuntimeError in DataLoader worker process 0``)
    whose last line is MONAI's ``applying transform <...>``: the line shown is the error of ours inside it."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import Lambda

    absent = tmp_path / "absent.pt"
    loader = DataLoader(Dataset([str(absent)], transform=Lambda(load_checkpoint)), num_workers=1)
    with pytest.raises(RuntimeError, match="DataLoader worker process") as info:
        next(iter(loader))
    assert str(info.value).strip().splitlines()[-1].startswith("RuntimeError: applying transform")
    line = last_line(info.value)
    assert line is not None and line.startswith(f"Error: CheckpointError: {absent}: checkpoint file not found;"), line


def test_demo_weights_in_the_full_size_inference_end_with_the_file_and_the_fix(tmp_path: Path) -> None:
    """CXR14 weights trained with ``configs/demo.json`` given to ``configs/inference.json`` alone: the last line
    once was torch's ``RuntimeError: size mismatch for class_layers.out.weight ...`` (the innermost error), while
    the ``CheckpointError`` naming the file was 150 lines above; now it names the file and says what to add."""
    from monai.bundle import ConfigParser
    from PIL import Image

    from conftest import activate_bundle

    bundle = ROOT / "bundles" / "cxr14_classification"
    activate_bundle(bundle)
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f) for f in ("inference.json", "demo.json")])
    parser.get_parsed_content("imports")
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True)
    ckpt = atomic_save({"model": network.state_dict(), "info": {"bundle": bundle.name}}, tmp_path / "demo_model.pt")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(images / "00000001_000.png")
    code, stderr, lines = _run(
        bundle,
        [ROOT],
        *("--config_file", "configs/inference.json", "--ckpt_path", str(ckpt), "--dataset_dir", str(images)),
        *("--output_dir", str(tmp_path / "out")),
    )
    assert code != 0 and "size mismatch for class_layers.out.weight" in stderr  # torch's error, above
    assert lines[-1].startswith(f"Error: CheckpointError: {ckpt}: weights do not fit"), lines[-3:]
    assert lines[-1].endswith(MISMATCH_HINT) and "configs/demo.json" in MISMATCH_HINT
    assert not (tmp_path / "out").exists()


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
    code, stderr, lines = _run(
        ROOT / "bundles" / bundle,
        [ROOT],
        "training",
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
    code, _, lines = _run(tmp_path, [bundle, ROOT], "training", "--config_file", config, "--dataset_dir", data)
    assert code != 0 and lines[-1].startswith(f"Error: BundleRootError: {tmp_path}"), lines[-5:]
    assert list(tmp_path.iterdir()) == []
