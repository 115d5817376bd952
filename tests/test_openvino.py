"""``common.openvino`` (tests/isolated/openvino_checks.py), run in a pytest process of its own.

Why a process of its own: the full suite died twice on 2026-12-04 of a SIGSEGV that the kernel raised (``si_code``
SI_KERNEL) in the main thread while it read a subprocess's pipe in the module after the OpenVINO checks. Cause,
found later: OpenVINO's CPU plugin points the thread's alternate signal stack at a buffer of its own while a plugin
instance lives and restores the previous one when it is destroyed; with an ``openvino.Core`` per engine, engines
dropped out of order left it on freed memory, and the next signal with a Python handler could not be delivered.
``common.openvino`` now shares one Core per process (guarded below); the checks stay in their own process so that
NNCF's and OpenVINO's threads and caches never enter the suite's process either.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")

CHECKS = Path(__file__).parent / "isolated" / "openvino_checks.py"


def test_openvino_engine_checks_in_their_own_process() -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)]
    proc = subprocess.run(cmd, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-3000:]


# Two engines made, the first dropped first (the order garbage collection may pick), then a signal with a Python
# handler: before engines shared one openvino.Core, each Core's CPU plugin pointed the main thread's alternate signal
# stack at its own buffer and restored the previous one when dropped, so this left it on freed memory and the
# signal killed the process (SIGSEGV raised by the kernel, as in the full suite on 2026-12-04).
ENGINES_DROPPED_OUT_OF_ORDER = """
import gc, os, signal, torch
from common.openvino import OpenVINONetwork
net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1))
first, second = OpenVINONetwork(net, "f32"), OpenVINONetwork(net, "f32")
first(torch.zeros(1, 2, 8, 8, 8))
second(torch.zeros(1, 2, 8, 8, 8))
del first
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive", flush=True)
"""


def test_engines_dropped_in_any_order_leave_signals_deliverable() -> None:
    cmd = [sys.executable, "-c", ENGINES_DROPPED_OUT_OF_ORDER]
    proc = subprocess.run(cmd, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert proc.stdout.split() == ["handled", "alive"], proc.stdout
