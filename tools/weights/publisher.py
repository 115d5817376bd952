"""A publisher's checkpoint file read as it is published, and checked against the network it should hold.

Publishers save weights in different ways: the MONAI model zoo's ``models/model.pt`` is a bare state dict (its
``CheckpointSaver`` with one object), this collection's checkpoints are ``{"model": state_dict, ...}``, and
torchxrayvision publishes whole pickled networks (``torch.save(model)``). The first two are read with
``weights_only=True``; a pickled network needs full unpickling, which runs code stored in the file, so it happens
only when the user asks for it (``--unsafe_unpickle``), with a warning.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import model_state

UNSAFE_FLAG = "--unsafe_unpickle"


class WeightsImportError(RuntimeError):
    """A publisher's file that cannot be imported; the message names the file and what was expected."""


def read_state_dict(path: str | os.PathLike, unsafe_unpickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a published checkpoint: a state dict, ``{"model": state_dict}``, or (only with
    ``unsafe_unpickle``) a whole pickled network."""
    path = Path(path)
    if not path.is_file():
        raise WeightsImportError(f"{path}: file not found")
    if _is_torchscript(path):
        raise WeightsImportError(
            f"{path}: a TorchScript archive (such as the model zoo's models/model.ts), which holds a compiled "
            "program, not importable weights; pass the state dict models/model.pt"
        )
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a pickle of objects: a foreign or damaged file
            raise WeightsImportError(_unreadable(path, e)) from e
        if not unsafe_unpickle:
            raise WeightsImportError(
                f"{path}: holds pickled Python objects ({found.group(1)}; e.g. a whole network saved with "
                "torch.save(model), the way torchxrayvision publishes its weights), which only full unpickling can "
                "read, and unpickling runs code stored in the file. If you trust the file (downloaded from the "
                f"publisher), rerun with {UNSAFE_FLAG}; or convert it once yourself: "
                "torch.save(torch.load(f, weights_only=False).state_dict(), 'state_dict.pt') and import that"
            ) from e
        obj = _unpickle(path)
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise WeightsImportError(_unreadable(path, e)) from e
    return _tensors(obj, path)


def _unpickle(path: Path) -> Any:
    message = f"{path}: full unpickling ({UNSAFE_FLAG}) runs code stored in the file; only for files you trust"
    warnings.warn(message, stacklevel=3)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise WeightsImportError(
            f"{path}: the pickled network needs the publisher's package to unpickle ({e}); for torchxrayvision: "
            "pip install -r requirements.txt (it pins torchxrayvision)"
        ) from e
    except Exception as e:
        raise WeightsImportError(_unreadable(path, e)) from e
    if isinstance(obj, torch.nn.Module):
        # networks pickled by torch < 1.6 lack this attribute and state_dict() fails; torchxrayvision's own loader
        # patches it the same way
        for module in obj.modules():
            if not hasattr(module, "_non_persistent_buffers_set"):
                module._non_persistent_buffers_set = set()
        return obj.state_dict()
    return obj


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch highlights parts of its messages for terminals
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _is_torchscript(path: Path) -> bool:
    """A zip archive with the compiled program (``<name>/code/``) that ``torch.jit.save`` writes."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def _unreadable(path: Path, error: BaseException) -> str:
    return f"{path}: cannot be read as a PyTorch checkpoint ({_first_line(error)})"


def _tensors(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise WeightsImportError(f"{path}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    state = dict(model_state(obj))  # {"model": ...} layouts and DistributedDataParallel's 'module.' prefix
    others = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others or not state:
        what = f"entries that are not tensors: {others[:5]}" if others else "no entries"
        raise WeightsImportError(f"{path}: expected a state dict (names -> tensors), found {what}")
    return state


def check_keys(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    path: str | os.PathLike,
    what: str,
    optional: Iterable[str] = (),
) -> None:
    """Refuse a file whose keys or shapes are not ``expected`` (name -> shape), naming the file and examples."""
    optional = set(optional)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in optional]
    wrong = [
        f"{k} {tuple(state[k].shape)} instead of {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its {len(expected)} keys missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of another shape (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise WeightsImportError(f"{path}: not {what}: " + "; ".join(problems))
