"""Resuming an interrupted training run from its latest epoch checkpoint."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader, CheckpointSaver

from common.files import write_json_atomic

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the largest N in ``ckpt_dir`` (written by CheckpointSaver)."""
    found = []
    for f in Path(ckpt_dir).glob("*checkpoint_epoch=*.pt"):
        m = CHECKPOINT_PATTERN.search(f.name)
        if m:
            found.append((int(m.group(1)), f))
    return max(found)[1] if found else None


class EpochCheckpoints:
    """Save the full training state every ``save_interval`` epochs and, when ``resume``, restart from it.

    The state is network, optimizer, scheduler (``save_dict``) plus the trainer itself (epoch/iteration),
    added at ``attach`` time because a config cannot reference the trainer from inside its own handlers.
    Saving goes through MONAI's ``CheckpointSaver`` (atomic, keeps the last ``n_saved`` files, rank 0 only);
    loading through ``CheckpointLoader`` (``weights_only=True``, ``map_location``). ``resume=true`` without
    a checkpoint starts from scratch (logged), so it is safe on a first run.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        save_dict: dict[str, Any],
        resume: bool = False,
        save_interval: int = 1,
        n_saved: int = 1,
        map_location: Any = "cpu",
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.resume = bool(resume)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.map_location = str(map_location) if isinstance(map_location, torch.device) else map_location
        self.loaded: Path | None = None

    def attach(self, engine: Engine) -> None:
        state = {**self.save_dict, "trainer": engine}
        if self.resume:
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                logger.warning(f"resume requested but no checkpoint_epoch=*.pt in {self.ckpt_dir}: starting fresh")
            else:
                CheckpointLoader(load_path=str(path), load_dict=state, map_location=self.map_location).attach(engine)
                self.loaded = path
                logger.info(f"resuming from {path}")
        rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
            torch.distributed.get_rank() == 0
        )
        if rank0 and self.save_interval > 0:
            CheckpointSaver(
                save_dir=str(self.ckpt_dir),
                save_dict=state,
                file_prefix="",
                save_interval=self.save_interval,
                epoch_level=True,
                n_saved=self.n_saved,
            ).attach(engine)


def write_metrics(engine: Engine, path: str | Path) -> dict[str, float]:
    """Dump an evaluator's final ``state.metrics`` (mean and per-region values) to JSON, atomically."""

    metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
    write_json_atomic(metrics, path, indent=2)
    return metrics


class BundleTag:
    """A second entry for ``CheckpointSaver`` so that ``model.pt`` is saved as ``{"model": ..., "bundle": ...}``.

    With a single object ignite saves a bare state dict; MONAI Label and ``common.checkpoint`` read both, but
    the ``{"model": state_dict}`` layout is the model-zoo convention.
    """

    def __init__(self, name: str = "brats_segmentation") -> None:
        self.name = name

    def state_dict(self) -> dict[str, str]:
        return {"name": self.name}

    def load_state_dict(self, state: dict[str, str]) -> None:
        self.name = state.get("name", self.name)
