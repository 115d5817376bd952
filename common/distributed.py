"""The end of a ``torchrun`` worker, shared by every bundle's ``multi_gpu_train.json`` ``finalize``.

Why not simply return after ``destroy_process_group()``: c10d's C++ threads (the gloo transport loop, the store
client) outlive ``destroy_process_group()`` and are still running when the interpreter finalizes. If one of them
touches a Python object then (a tensor freed by pending gloo work, for example), it tries to take the GIL during
finalization; CPython ends such a thread with a forced unwind that C++ turns into ``std::terminate`` ("terminate
called without an active exception", SIGABRT). Training has finished and rank 0 has saved by then, but torchrun
reports the rank as failed and the launch exits non-zero. Seen in 1 of the 12 launches of two clean-clone test runs
under load (a two-node gloo test, 2026-12-03) and in both attempts of one earlier CI run; the mechanism is the one
PyTorch pull request #179291 describes (abandoned upstream).

So a worker that the launcher started ends here: every rank waits at a barrier (rank 0 has finished saving),
the group is destroyed, logs and standard streams are flushed, and the process leaves with ``os._exit(0)``,
skipping the interpreter finalization where the abort happens. Outside ``torchrun`` (no process group, or a group
the caller made in-process, e.g. a test) it only destroys the group and returns.
"""

from __future__ import annotations

import logging
import os
import sys

import torch.distributed as dist

LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun (torch.distributed.run) in every worker it starts


def under_torchrun() -> bool:
    """True in a worker process started by ``torchrun``."""
    return LAUNCHER_ENV in os.environ


def finish(exit_process: bool | None = None) -> None:
    """Barrier, destroy the process group, flush; then ``os._exit(0)`` in a torchrun worker (see module docstring).

    ``exit_process`` forces (True) or prevents (False) the exit; by default it follows ``under_torchrun()``.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    if exit_process is None:
        exit_process = under_torchrun()
    if not exit_process:
        return
    logging.shutdown()  # flushes and closes every handler (files included)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing left to save
            pass
    os._exit(0)
