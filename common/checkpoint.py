"""Checkpoints that survive interruption and move between devices.

A checkpoint is written to a temporary file beside its target and renamed over it, so an interrupted save
never leaves a half-written ``model.pt``. Loading always uses ``weights_only=True`` (no arbitrary pickle)
and ``map_location``, so a checkpoint saved on CUDA loads on a CPU-only machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.files import atomic_open


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the file named in the message."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name in the same folder, then rename over ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({e})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def model_state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The network weights in a checkpoint: the ``model`` entry (MONAI's layout) or the dict itself."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError("checkpoint 'model' entry is not a state dict")
    # weights saved from DistributedDataParallel carry a 'module.' prefix
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True
) -> torch.nn.Module:
    """Load network weights from ``path``; a checkpoint of another network is refused with a clear message."""
    state = model_state(load_checkpoint(path, map_location))
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        expected = network.__class__.__name__
        raise CheckpointError(
            f"{path}: weights do not fit this {expected} (from another network or configuration?): {e}"
        ) from e
    return network
