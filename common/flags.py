"""Switches that arrive from the command line as text, and the defaults a run takes from the machine.

``python -m monai.bundle run ... --use_amp false`` passes the string ``"false"`` (python-fire only turns Python
literals such as ``False`` into booleans), and a non-empty string is true: the documented ``--use_amp false`` once
left bf16 on. Every boolean switch a config hands to bundle code goes through :func:`as_bool`.

Every train and inference config sets ``num_workers`` to ``$common.flags.dataloader_workers()``
(``--num_workers 0`` loads in the main process).
"""

from __future__ import annotations

import os


def as_bool(value: bool | str | int) -> bool:
    """``True``/``False`` for a bool, 0/1, or the words true/false, yes/no, on/off, 1/0 (any case); else an error."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)


def dataloader_workers(limit: int = 4) -> int:
    """DataLoader worker processes for this run: the CPUs this process may use, at most ``limit``.

    The CPUs come from the process's affinity (``taskset``, container cpusets, batch schedulers), which
    ``os.cpu_count()`` ignores: it counts the whole machine, and 4 workers on a 2-core share only compete with the
    main process. Where affinity is not available (macOS, Windows) ``os.cpu_count()`` is used."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(limit, cpus))
