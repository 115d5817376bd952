"""Shared test plumbing.

- Each bundle ships its own ``scripts`` package (MONAI Label requires that name), so one pytest process must
  switch which bundle's ``scripts`` is importable before collecting or running a bundle's tests.
- ``torchrun``: launches a bundle under ``torchrun`` (one or two nodes on this machine, gloo) and reads what
  each rank wrote to its own log file, so multi-process tests never parse interleaved output.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
BUNDLES = ROOT / "bundles"
if str(ROOT) not in sys.path:  # tests import the repository's tools and benchmarks packages
    sys.path.insert(0, str(ROOT))


def _bundle_of(path: Path) -> Path | None:
    try:
        rel = Path(path).resolve().relative_to(BUNDLES)
    except ValueError:
        return None
    return BUNDLES / rel.parts[0] if rel.parts else None


def activate_bundle(bundle: Path) -> None:
    """Make ``import scripts`` resolve to ``bundle/scripts`` (and drop another bundle's modules)."""
    root = str(bundle)
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if not file.startswith(root + "/"):
            del sys.modules[name]
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)


def pytest_collectstart(collector: pytest.Collector) -> None:
    bundle = _bundle_of(collector.path) if isinstance(collector, pytest.Module) else None
    if bundle is not None:
        activate_bundle(bundle)


def pytest_runtest_setup(item: pytest.Item) -> None:
    bundle = _bundle_of(item.path)
    if bundle is not None:
        activate_bundle(bundle)


# ---------------------------------------------------------------- torchrun launches for the multi-process tests


@dataclass
class TorchrunLaunch:
    """A finished ``torchrun`` launch (one agent per node). Each rank's stdout/stderr come from its own file
    (``torchrun --log-dir ... --redirects 3``), never from a pipe that several processes write to."""

    commands: list[list[str]]
    returncodes: list[int]
    agent_output: list[str]
    rank_logs: dict[str, tuple[str, str]]  # "node<n>/local<l>" -> (stdout, stderr)

    @property
    def ok(self) -> bool:
        return all(rc == 0 for rc in self.returncodes)

    def report(self) -> str:
        parts = [f"return codes {self.returncodes}"]
        for cmd, out in zip(self.commands, self.agent_output):
            parts.append(f"$ {' '.join(cmd)}\n{out[-3000:]}")
        for name, (stdout, stderr) in sorted(self.rank_logs.items()):
            parts.append(f"--- {name} stdout\n{stdout[-3000:]}\n--- {name} stderr\n{stderr[-4000:]}")
        return "\n".join(parts)

    def check_ranks(self, nnodes: int, nproc_per_node: int) -> dict[int, dict[str, str]]:
        """Every rank ran and finished training, each with its own global rank, node-local rank and device."""
        assert self.ok, self.report()
        ranks = self.ranks()
        world = nnodes * nproc_per_node
        assert sorted(ranks) == list(range(world)), f"ranks {sorted(ranks)} reported\n{self.report()}"
        for rank, info in ranks.items():
            assert info["world_size"] == str(world), (rank, info)
            # node-local: on the second node RANK 1 has LOCAL_RANK 0, and the device must follow LOCAL_RANK
            assert info["local_rank"] == str(rank % nproc_per_node), (rank, info)
            assert info["device"] == "cpu", (rank, info)
            assert "iterations" in info, f"rank {rank} did not finish training\n{self.report()}"
        return ranks

    def ranks(self) -> dict[int, dict[str, str]]:
        """What each rank reported about itself: the ``rank R of W | local_rank L | device D`` line printed before
        training and the ``rank R done | epochs E | iterations I`` line printed after (multi_gpu_train.json)."""
        found: dict[int, dict[str, str]] = {}
        for name, (stdout, _) in self.rank_logs.items():
            start = re.search(r"^rank (\d+) of (\d+) \| local_rank (\d+) \| device (\S+)", stdout, re.M)
            done = re.search(r"^rank (\d+) done \| epochs (\d+) \| iterations (\d+)", stdout, re.M)
            if start is None:
                continue
            rank = int(start.group(1))
            assert rank not in found, f"two processes report rank {rank}\n{self.report()}"
            found[rank] = {"log": name, "world_size": start.group(2), "local_rank": start.group(3)}
            found[rank]["device"] = start.group(4)
            if done is not None and int(done.group(1)) == rank:
                found[rank].update(epochs=done.group(2), iterations=done.group(3))
        return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_torchrun(
    cwd: Path,
    args: list[str],
    log_dir: Path,
    nnodes: int = 1,
    nproc_per_node: int = 2,
    env: dict[str, str] | None = None,
    timeout: float = 1800,  # hang guard only (tests.helpers.HANG_GUARD): never a speed check
) -> TorchrunLaunch:
    """``torchrun ... -m monai.bundle run <args>`` from ``cwd``; with ``nnodes=2`` two agents on this machine
    join through a static rendezvous on 127.0.0.1 (node ranks 0 and 1), as two hosts would."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "BUNDLES_PROGRESS": "0", **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(cwd)])
    base = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1:
        nodes = [base + ["--standalone"]]
    else:
        port = _free_port()
        rendezvous = ["--rdzv_backend=static", "--master_addr=127.0.0.1", f"--master_port={port}"]
        nodes = [base + rendezvous + [f"--node_rank={n}"] for n in range(nnodes)]
    commands = [
        cmd + ["--log-dir", str(log_dir / f"node{n}"), "--redirects", "3", "-m", "monai.bundle", "run", *args]
        for n, cmd in enumerate(nodes)
    ]
    procs = [
        subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outputs.append(p.communicate()[0] + f"\n[killed after {timeout} s]")
    logs = {}
    for n in range(nnodes):
        for stdout in sorted((log_dir / f"node{n}").glob("*/attempt_*/*/stdout.log")):
            stderr = stdout.with_name("stderr.log")
            name = f"node{n}/local{stdout.parent.name}/{stdout.parent.parent.name}"
            logs[name] = (stdout.read_text(), stderr.read_text() if stderr.is_file() else "")
    return TorchrunLaunch(commands, [p.returncode for p in procs], outputs, logs)


@pytest.fixture
def torchrun(tmp_path: Path):
    """``torchrun(bundle_dir, ["training", "--config_file", ...], nnodes=1)`` -> :class:`TorchrunLaunch`."""

    def run(cwd: Path, args: list[str], nnodes: int = 1, **kwargs) -> TorchrunLaunch:
        return launch_torchrun(cwd, args, tmp_path / f"torchrun_logs_{nnodes}nodes", nnodes=nnodes, **kwargs)

    return run
