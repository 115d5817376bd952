"""MLflow tracking to a local folder for ``python -m monai.bundle run ... --tracking mlflow``.

MONAI's default MLflow settings (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``) attach an ``MLFlowHandler`` to
``train#trainer`` / ``validate#evaluator`` through the ``train#handlers`` / ``validate#handlers`` lists and log
to ``tracking_uri`` (a config id they only fill in when the bundle has none). MLflow >= 3.x refuses its
filesystem store (``<dir>/mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE=true``, so each ``train.json`` defines
``tracking_uri`` with :func:`file_store_uri`, which opts in for the local folder it returns. Any other URI can
still be given on the command line (``--tracking_uri sqlite:///runs.db`` or a server URL).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


def file_store_uri(path: str | os.PathLike) -> str:
    """``file://`` URI of the local MLflow store ``path`` (created on first use by MLflow).

    Sets ``MLFLOW_ALLOW_FILE_STORE=true`` unless the environment already says otherwise: a local folder is
    what the bundles ask for (no server, no database), and mlflow-skinny has no SQL backend.
    """
    os.environ.setdefault(ALLOW_FILE_STORE, "true")
    return Path(path).resolve().as_uri()


def close_mlflow_runs(handlers: Iterable[Any] | None) -> int:
    """Mark the runs of the ``MLFlowHandler`` s in ``handlers`` finished; returns how many were closed.

    MONAI's validator handler never closes its run (in training the trainer's handler does). An evaluation-only
    workflow calls this after ``evaluator.run()``; otherwise its run would stay RUNNING and the next run with
    the default ``run_name`` would log into it. A no-op without ``--tracking``.
    """
    from monai.handlers import MLFlowHandler

    closed = 0
    for handler in handlers or []:
        if isinstance(handler, MLFlowHandler) and handler.cur_run is not None:
            handler.close()
            closed += 1
    return closed
