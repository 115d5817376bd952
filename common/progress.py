"""Progress bars for the bundles' engines, shown only where a person is watching.

A tqdm bar redraws itself with carriage returns: in a terminal that is a live progress line, in a CI log or in
MONAI Label's server log it is hundreds of lines of noise. So the bar is attached only when stderr (where tqdm
writes) is a terminal, only on rank 0 of a multi-process run, and never when ``BUNDLES_PROGRESS=0``
(``BUNDLES_PROGRESS=1`` forces it on, e.g. under ``script``/``tee``).

Config use, first in ``train#handlers`` / ``validate#handlers`` (placed before ``ValidationHandler`` so that the
trainer's bar closes before the validation bar opens)::

    {"_target_": "common.progress.ProgressHandler", "desc": "train",
     "loss_transform": "$monai.handlers.from_engine(['loss'], first=True)"}
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import IO, Any

ENV_VAR = "BUNDLES_PROGRESS"


def _is_rank0() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return True
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0)


def show_progress(stream: IO[Any] | None = None, env: dict[str, str] | None = None) -> bool:
    """Whether to draw progress bars: ``BUNDLES_PROGRESS`` if set to 0/1, else rank 0 and ``stream`` is a TTY.

    ``stream`` defaults to ``sys.stderr`` (tqdm's output), ``env`` to ``os.environ``.
    """
    value = (os.environ if env is None else env).get(ENV_VAR, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if not _is_rank0():
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressHandler:
    """MONAI-style handler (``attach(engine)``) that adds an ignite ``ProgressBar`` when :func:`show_progress`.

    Args:
        desc: label in front of the bar (ignite appends ``[epoch/max_epochs]``).
        loss_transform: maps ``engine.state.output`` to the loss shown after the bar (trainers); ``None`` shows
            only the iteration count (evaluators).
        enabled: ``None`` decides with :func:`show_progress` at attach time; ``True``/``False`` overrides.
        persist: keep each epoch's finished bar on screen.
    """

    def __init__(
        self,
        desc: str | None = None,
        loss_transform: Callable[[Any], Any] | None = None,
        enabled: bool | None = None,
        persist: bool = False,
    ) -> None:
        self.desc = desc
        self.loss_transform = loss_transform
        self.enabled = enabled
        self.persist = persist
        self.pbar: Any = None

    def attach(self, engine: Any) -> None:
        enabled = show_progress() if self.enabled is None else self.enabled
        if not enabled:
            return
        try:
            from ignite.handlers import ProgressBar
        except ImportError:  # pytorch-ignite < 0.5 (the MONAI Label environment)
            from ignite.contrib.handlers import ProgressBar

        kwargs = {"desc": self.desc} if self.desc else {}
        self.pbar = ProgressBar(persist=self.persist, **kwargs)
        transform = None
        if self.loss_transform is not None:
            loss_transform = self.loss_transform

            def transform(output: Any) -> dict[str, float]:
                return {"loss": float(loss_transform(output))}

        self.pbar.attach(engine, output_transform=transform)
