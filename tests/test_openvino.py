"""``common.openvino`` (tests/isolated/openvino_checks.py), run in a pytest process of its own.

Why a process of its own: with OpenVINO and NNCF loaded into the suite's process (TBB worker threads, NNCF's
int8 quantization, about 18,000 objects left in reference cycles per int8 engine), the full suite died twice on
2026-12-04 of a SIGSEGV that the kernel raised (``si_code`` SI_KERNEL) in the main thread while it read a
subprocess's pipe in the next module (test_pack_bundle), reproducibly in the full suite, never in smaller
selections. A child process keeps OpenVINO out of the suite's process; its failures are reported here in full.
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
