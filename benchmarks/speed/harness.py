"""Shared timing, memory and FLOP helpers for the speed benchmarks (one script per bundle beside this file).

Why each piece is done this way:
- Timing: wall clock (``time.perf_counter``) of whole end-to-end runs, one untimed warm-up per side, then sides
  interleaved A/B/A/B so that load from other users of a shared machine falls on both sides; the median is
  reported with every sample kept in the JSON.
- Peak memory: ``tracemalloc`` does not see torch's allocations, so every side runs once more in a fresh Python
  subprocess (``--child``) that reports its own ``ru_maxrss`` (the whole process: Python + torch + MONAI + data).
- Compute efficiency: FLOPs of the network calls counted with ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matmuls; 1 multiply-add = 2 FLOPs) during the warm-up run, divided by the measured time,
  as a fraction of this CPU's practical peak in the precision that side computes in (fp32, or bf16 where
  autocast or OpenVINO runs bf16): a bf16 pipeline at half the fp32 peak may still use little of the bf16 peak,
  and only the peak of its own precision says how much room is left. The peak is the faster of a large
  ``torch.matmul`` and a large channels-last 3x3x3 ``conv3d``, both measured in the same run: on AMD CPUs torch's
  fp32 matmul (MKL) reaches well under half of what oneDNN's fp32 convolutions reach (226 vs 560 GFLOP/s on a
  2-core Zen 5 EPYC, 2026-12-03), so a matmul alone is no peak for fp32 networks there.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"
CHILD_MARK = "SPEED_CHILD_RESULT "


def setup_paths(bundle: str) -> Path:
    """Put the repo root (``common``) and the bundle directory (its ``scripts`` package) on ``sys.path``."""
    bundle_dir = BUNDLES / bundle
    for p in (str(ROOT), str(bundle_dir)):
        if p not in sys.path:
            sys.path.insert(0, p)
    return bundle_dir


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=None, help="JSON results file (default benchmarks/results/speed_<bundle>.json)")
    p.add_argument("--work_dir", default=None, help="where synthetic data and outputs go (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (after one warm-up each)")
    p.add_argument("--train_iters", type=int, default=3, help="training iterations per timed run")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks the script, times nothing")
    p.add_argument("--no_memory", action="store_true", help="skip the fresh-subprocess peak-memory runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: "<side>:<task>" in a subprocess
    p.add_argument("--child_state", default=None, help=argparse.SUPPRESS)
    return p


def start(args: argparse.Namespace, name: str) -> tuple[Path, dict[str, Any], dict[str, dict[str, float]]]:
    """Common prologue of every speed script: threads, smoke settings, work dir, machine info and the kernel peaks
    per precision (``{"fp32": {"matmul": GFLOP/s, "conv3d": GFLOP/s}, "bf16": {...}}``)."""
    import torch

    torch.set_num_threads(args.threads)
    if args.smoke:
        args.repeats, args.train_iters = 1, 1
    work = Path(args.work_dir or tempfile.mkdtemp(prefix=f"speed_{name}_"))
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.threads)
    peaks = {p: kernel_peaks_gflops(p, small=args.smoke) for p in PRECISIONS}
    shown = "; ".join(f"{p} " + ", ".join(f"{k} {v:.0f}" for k, v in peaks[p].items()) for p in PRECISIONS)
    print(
        f"machine: {machine['cpu_model']}, {machine['cpus']} CPUs, native bf16 {machine['native_bf16']}; "
        f"GFLOP/s {shown}"
    )
    args.started = time.perf_counter()
    return work, machine, peaks


def seeded_state(make_network: Callable[[], Any], seed: int = 0) -> dict:
    """State dict of a freshly built network after ``torch.manual_seed(seed)``: the same weights for both sides."""
    import torch

    torch.manual_seed(seed)
    return copy.deepcopy(make_network().state_dict())


def bundle_parser(bundle_dir: Path, config: str, overrides: dict[str, Any]) -> Any:
    """A ``ConfigParser`` of the bundle's ``configs/<config>`` as shipped, with ``bundle_root`` and ``overrides``
    set: how the scripts build OUR side."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / config))
    parser.update({"bundle_root": str(bundle_dir), **overrides})
    return parser


def load_state(network: Any, state: dict) -> Any:
    network.load_state_dict(state)
    return network


# ----------------------------------------------------------------------------------------------- machine


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def machine_info(threads: int) -> dict[str, Any]:
    """Model name, cores, the bf16-relevant flags and library versions: what a reader needs to compare numbers."""
    import monai
    import torch

    from common.amp import amp_settings, cpu_flags, cpu_supports_bf16

    cpu = lscpu()
    flags = cpu_flags() or set()
    relevant = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"]
    return {
        "cpu_model": cpu.get("Model name", platform.processor()),
        # the model name of a VM can hide the generation ("AMD EPYC"): family/model tell Zen 3 from Zen 4, and the
        # kernels PyTorch picks (AVX2 vs AVX-512) follow from the flags below
        "cpu_id": f"{cpu.get('Vendor ID', '?')} family {cpu.get('CPU family', '?')} model {cpu.get('Model', '?')}",
        "cpus": os.cpu_count(),
        "cores_per_socket": cpu.get("Core(s) per socket"),
        "hypervisor": cpu.get("Hypervisor vendor"),
        "bf16_flags": {f: f in flags for f in relevant},
        "native_bf16": cpu_supports_bf16(),
        "bundle_amp_on_this_cpu": amp_settings("cpu").describe(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": list(os.getloadavg()),
    }


PRECISIONS = ("fp32", "bf16")


def kernel_peaks_gflops(precision: str = "fp32", small: bool = False, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` GFLOP/s in ``precision`` (``"fp32"`` or ``"bf16"``) of the two kernels these networks
    spend their time in, at sizes large enough to reach this CPU's practical peak with this thread count:
    ``matmul`` (2048x2048) and ``conv3d`` (64 -> 64 channels, 3x3x3, a 32^3 channels-last volume; oneDNN).
    ``peak_gflops`` takes the faster one. ``small``: tiny sizes for smoke runs."""
    import torch
    import torch.nn.functional as F

    dtype = torch_dtype(precision)
    n, c, s = (256, 16, 8) if small else (2048, 64, 32)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    x = torch.randn(1, c, s, s, s, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(c, c, 3, 3, 3, dtype=dtype)
    kernels = {
        "matmul": (lambda: torch.matmul(a, b), 2 * n**3),
        "conv3d": (lambda: F.conv3d(x, w, padding=1), 2 * c * c * 27 * s**3),
    }
    out = {}
    for name, (run, flops) in kernels.items():
        run()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        out[name] = round(flops / best / 1e9, 1)
    return out


def peak_gflops(peaks: dict[str, dict[str, float]], precision: str) -> float | None:
    """This CPU's practical peak in ``precision``: the faster of the kernels ``kernel_peaks_gflops`` measured;
    ``None`` for a precision with no measured peak (int8: torch has no int8 3D convolution to time)."""
    return max(peaks[precision].values()) if precision in peaks else None


@contextmanager
def count_flops() -> Any:
    """``with count_flops() as c: ...; c.total`` -> FLOPs of the torch ops run inside (convs, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    class _Counter:
        total = 0

    counter = _Counter()
    mode = FlopCounterMode(display=False)
    with mode:
        yield counter
    counter.total = int(mode.get_total_flops())


# ----------------------------------------------------------------------------------------------- timing


def interleaved(
    sides: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: dict[str, Callable[[], Any]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Time each side's callable ``repeats`` times in A/B/A/B order after one warm-up each (``warmup`` may give
    a different callable for the warm-up, e.g. one that counts FLOPs). Returns per side the samples and median."""
    results: dict[str, dict[str, Any]] = {name: {"samples_s": []} for name in sides}
    for name, fn in sides.items():
        t = time.perf_counter()
        (warmup or {}).get(name, fn)()
        results[name]["warmup_s"] = round(time.perf_counter() - t, 3)
        log(f"  warm-up {name}: {results[name]['warmup_s']:.2f} s")
    for r in range(repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            t = time.perf_counter()
            sides[name]()
            elapsed = time.perf_counter() - t
            results[name]["samples_s"].append(round(elapsed, 3))
            log(f"  run {r + 1}/{repeats} {name}: {elapsed:.2f} s")
    for res in results.values():
        res["median_s"] = round(statistics.median(res["samples_s"]), 3)
        res["spread_pct"] = round(100 * (max(res["samples_s"]) - min(res["samples_s"])) / res["median_s"], 1)
    return results


def interleaved_with_flops(
    sides: dict[str, Callable[[], Any]], repeats: int, log: Callable[[str], None] = print
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """``interleaved`` with each side's warm-up run under ``count_flops`` (the warm-up does the work of one timed
    run, so counting there costs no timed run): the timings and each side's FLOPs per run."""
    flops: dict[str, int] = {}

    def counted(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with count_flops() as c:
                fn()
            flops[name] = c.total

        return run

    timings = interleaved(sides, repeats, warmup={k: counted(k, v) for k, v in sides.items()}, log=log)
    return timings, flops


def amp_precision(amp: Any) -> str:
    """``"bf16"`` or ``"fp32"``: what a side with ``common.amp`` settings ``amp`` computes its convolutions in
    (these benchmarks run on the CPU, where ``common.amp`` picks bf16 or nothing)."""
    if not amp.enabled:
        return "fp32"
    if amp.dtype != torch_dtype("bf16"):
        raise ValueError(f"no CPU peak measured for autocast dtype {amp.dtype}")
    return "bf16"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def set_peak_fractions(
    timings: dict[str, dict[str, Any]],
    flops: dict[str, int],
    peaks: dict[str, dict[str, float]],
    precision: dict[str, str],
) -> None:
    """Per side: its ``precision``, achieved GFLOP/s, and that rate over the peak of its own precision
    (``fraction_of_peak``, the share of this CPU's practical compute in that precision it used) and over the
    fp32 peak (``fraction_of_fp32_peak``, comparable between sides)."""
    for name, t in timings.items():
        gflops = flops[name] / 1e9 / t["median_s"]
        t["precision"] = precision[name]
        t["gflops_achieved"] = round(gflops, 1)
        peak = peak_gflops(peaks, precision[name])
        t["fraction_of_peak"] = round(gflops / peak, 3) if peak else None
        t["fraction_of_fp32_peak"] = round(gflops / max(peaks["fp32"].values()), 3)


# ----------------------------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident memory of this process's address space: ``VmHWM`` from /proc (reset by exec, unlike
    ``ru_maxrss``, which Linux carries over from the forking parent), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_report(payload: dict[str, Any]) -> None:
    """Called at the end of a ``--child`` run: print this process's peak RSS (MB) for the parent to read.
    DataLoader worker processes (ours and the reference both use them in training) are not included."""
    payload = {**payload, "peak_rss_mb": peak_rss_mb()}
    print(CHILD_MARK + json.dumps(payload), flush=True)


def run_child(script: str | Path, argv: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script argv`` in a fresh interpreter and return what it passed to ``child_report``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK) :])
    raise RuntimeError(f"child {argv} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def peak_memory(
    script: str | Path,
    args: argparse.Namespace,
    work: Path,
    state_file: Path,
    tasks: dict[str, Sequence[str]],
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Peak RSS (MB) of each task's sides, each run once more in a fresh ``script --child <side>:<task>`` (which
    reads ``work`` and ``state_file``), keyed ``<task>_<side>``; empty with ``--no_memory``."""
    memory: dict[str, float] = {}
    if args.no_memory:
        return memory
    argv = ["--work_dir", str(work), "--child_state", str(state_file), "--threads", str(args.threads)]
    argv += ["--smoke"] if args.smoke else []
    for task, names in tasks.items():
        for name in names:
            r = run_child(Path(script).resolve(), ["--child", f"{name}:{task}", *argv])
            memory[f"{task}_{name}"] = r["peak_rss_mb"]
            log(f"  peak RSS {task} {name}: {r['peak_rss_mb']:.0f} MB")
    return memory


# ----------------------------------------------------------------------------------------------- report


def ratio(reference: float, ours: float) -> float:
    """How many times faster ours is (reference time / our time)."""
    return round(reference / ours, 2) if ours > 0 else float("nan")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command as a user types it from the repository root: ``-m package.module`` for a script inside the
    repository, and paths inside the repository relative to its root (so the docs' command works in any clone)."""

    def rel(arg: str) -> str:
        if os.path.isabs(arg) and Path(arg).resolve().is_relative_to(ROOT.resolve()):
            return os.path.relpath(Path(arg).resolve(), ROOT.resolve())
        return arg

    script = rel(os.path.abspath(sys.argv[0]))
    if script.endswith(".py") and not os.path.isabs(script):
        script = "-m " + script[: -len(".py")].replace(os.sep, ".")
    return " ".join([".venv/bin/python", script, *(rel(a) for a in sys.argv[1:])])


def write_results(path: str | Path, results: dict[str, Any]) -> Path:
    """Atomic JSON write; adds the load average at the end (with the one at the start: interference from others)."""
    from common.files import atomic_write_text

    results = {**results, "load_average_at_end": list(os.getloadavg())}
    return atomic_write_text(json.dumps(results, indent=2, default=str) + "\n", path)


def print_report(report: dict[str, Any], out: str | Path | None) -> None:
    """``report`` as indented JSON on stdout and, when ``out`` is given, written atomically there (the one-off
    LUNA16 window and full-size measurements)."""
    from common.files import atomic_write_text

    text = json.dumps(report, indent=2)
    print(text)
    if out:
        atomic_write_text(text + "\n", out)


def speedups(timings: dict[str, dict[str, Any]], sides: Sequence[str], key: str = "median_s") -> dict[str, float]:
    """Reference time over each side's time (``median_s``), or each side's rate over the reference's."""
    ref = timings["reference"][key]
    if key == "median_s":
        return {n: ratio(ref, timings[n][key]) for n in sides}
    return {n: ratio(timings[n][key], ref) for n in sides}


def finish(
    name: str,
    args: argparse.Namespace,
    machine: dict[str, Any],
    peaks: dict[str, dict[str, float]],
    table: str,
    results: dict[str, Any],
) -> Path:
    """Write the script's results with the fields every speed JSON has, and print the table."""
    out = write_results(
        args.out or default_out(name),
        {
            "command": command_line(),
            "machine": machine,
            "kernel_peaks_gflops": peaks,
            "seconds": round(time.perf_counter() - args.started, 1),
            "smoke": args.smoke,
            **results,
            "table_markdown": table,
        },
    )
    print(table)
    print(f"wrote {out}")
    return out


def default_out(bundle_short: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"speed_{bundle_short}.json"
