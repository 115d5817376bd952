"""common.distributed.finish: how every bundle's multi_gpu_train.json ends a torchrun worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from common.distributed import finish
from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]

_WORKER = """
import atexit, logging, os, sys
import torch.distributed as dist
from common.distributed import finish

out = sys.argv[1]
rank = int(os.environ["RANK"])
logging.basicConfig(filename=f"{out}/rank{rank}.log", level=logging.INFO)
atexit.register(lambda: open(f"{out}/rank{rank}.atexit", "w").close())
dist.init_process_group("gloo")
logging.getLogger("worker").info("rank %d trained", rank)
sys.stdout = open(sys.stdout.fileno(), "w", buffering=1 << 16, closefd=False)  # torchrun runs python -u
print(f"rank {rank} printed")  # left in the buffer: finish() must flush it
finish()
open(f"{out}/rank{rank}.after", "w").close()  # never reached under torchrun
"""


def test_outside_torchrun_it_destroys_the_group_and_returns(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    finish()  # returns: the caller (a test, a notebook) goes on
    assert not dist.is_initialized()
    finish()  # no group: a no-op


def test_a_torchrun_worker_flushes_and_leaves_without_finalization(tmp_path: Path) -> None:
    """Under torchrun each rank passes the barrier, its log file and buffered stdout are complete, and the
    process ends before interpreter finalization (atexit handlers do not run), with exit code 0."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["--log-dir", str(tmp_path / "logs"), "--redirects", "1", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} trained" in (tmp_path / f"rank{rank}.log").read_text()
        stdout = next((tmp_path / "logs").rglob(f"attempt_0/{rank}/stdout.log"))
        assert stdout.read_text().strip() == f"rank {rank} printed"
        assert not (tmp_path / f"rank{rank}.after").exists()
        assert not (tmp_path / f"rank{rank}.atexit").exists()
