"""Mutation testing (mutmut 3.8.1) of the metric and label-mapping modules: do the tests pin every rule?

    python tools/mutation.py                          # every group, one after the other (`make mutate`)
    python tools/mutation.py luna16_detection        # some groups; the other modules keep their last figures
    python tools/mutation.py --max-children 1 --work /tmp/mutation

Writes ``benchmarks/results/mutation.json`` (per module: killed, non-equivalent survivors, equivalent mutants with
the reason no test can tell them apart, kill rate over the non-equivalent ones) and
``work_dirs/mutation_survivors.txt`` (the diff of every surviving mutant). Exits 1 unless every module run has at
least ``--min-rate`` (90%) of its non-equivalent mutants killed. A mutant no test runs counts as a survivor;
timeouts and crashes count neither way (column "other" of the table, listed in the survivors file).

Why a staged run per group instead of one ``[tool.mutmut]`` section in the repository:

- every bundle has its own top-level ``scripts`` package; the root ``conftest.py`` switches ``sys.path`` per
  bundle and would put the *unmutated* copy first (every mutant survives), so each group runs from its own
  directory outside the repository where only one ``scripts`` is visible, with a generated ``pyproject.toml``
  (``[tool.mutmut]`` and ``[tool.pytest.ini_options]``) so the repository's pytest settings are not picked up;
- mutmut names a mutant after the file's path relative to where it runs (``scripts/froc.py`` ->
  ``scripts.froc.x_match_scan__mutmut_3``), which matches the trampolines' ``__module__`` only from the bundle's
  root; ``common`` is copied next to it and ``PYTHONPATH`` cleared so the editable install's ``common`` (the
  repository's, unmutated) is not the one imported;
- test helpers shared across the repository (``tests/oracles.py``, imported as ``tests.oracles``) are copied to the
  same path in the staging directory, beside the group's tests (mutmut copies ``tests/`` into ``mutants/``).

Equivalent mutants are listed in ``tools/mutation_equivalent.json`` as ``{"<mutant>": "`<old>` -> `<new>`: why"}``.
The code fragments are checked against the mutant's diff, so an entry left behind after the code (and mutmut's
numbering) changed counts as a survivor again instead of silently hiding another mutant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = ROOT / "tools" / "mutation_equivalent.json"
RESULTS_FILE = ROOT / "benchmarks" / "results" / "mutation.json"
SURVIVORS_FILE = ROOT / "work_dirs" / "mutation_survivors.txt"
MIN_RATE = 0.9

KILLED = {"killed"}  # a test failed with the mutant
SURVIVED = {"survived", "no tests"}  # every test passed, or no test ran the mutated function
INCOMPLETE = {"not checked", "check was interrupted by user"}  # the run did not finish: no figures from it


@dataclass(frozen=True)
class Group:
    """One mutmut run: a directory that becomes the staging root, the modules it mutates and the tests it runs."""

    root: str  # repository-relative; mutant names are relative to it
    modules: tuple[str, ...]  # relative to root
    tests: tuple[str, ...]  # relative to root
    copy: tuple[str, ...]  # relative to root: source packages the tests import (the first is mutmut's source path)
    shared: tuple[str, ...] = ()  # repository-relative test helpers the tests import, staged at the same path


GROUPS: dict[str, Group] = {
    "common": Group(
        root=".",
        modules=("common/metrics.py", "common/handlers.py"),
        tests=("tests/test_metrics.py", "tests/test_metrics_rules.py"),
        copy=("common",),
        shared=("tests/oracles.py",),
    ),
    "luna16_detection": Group(
        root="bundles/luna16_detection",
        modules=("scripts/froc.py", "scripts/boxes.py"),
        tests=(
            "tests/test_luna16_froc.py",
            "tests/test_luna16_froc_rules.py",
            "tests/test_luna16_boxes.py",
            "tests/test_luna16_boxes_rules.py",
        ),
        copy=("scripts", "../../common"),
    ),
    # the workflow tests (a training run each) are left out: unit tests of the report functions pin the values,
    # and a training per mutant would take hours
    "cxr14_classification": Group(
        root="bundles/cxr14_classification",
        modules=("scripts/metrics.py", "scripts/evaluation.py"),
        tests=("tests/test_cxr14_evaluation.py",),
        copy=("scripts", "../../common"),
    ),
    "brats_segmentation": Group(
        root="bundles/brats_segmentation",
        modules=("scripts/brats.py", "scripts/lesion_wise.py"),
        tests=(
            "tests/test_brats_labels.py",
            "tests/test_lesion_wise.py",
            "tests/test_lesion_wise_rules.py",
        ),
        copy=("scripts", "../../common"),
        shared=("tests/oracles.py",),
    ),
}

PYTEST_MARKERS = (
    "slow: end-to-end runs longer than a minute",
    "benchmark: benchmark runs",
    "label: MONAI Label server integration",
)
PYTEST_ADDOPTS = (
    "-p no:cacheprovider --import-mode=importlib --strict-markers -m 'not label and not benchmark and not slow'"
)

# Runs in a staging directory (mutmut reads ./pyproject.toml there): status of every mutant, diff of the survivors.
_DUMP = """
import json
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files
out = {}
for path in walk_mutatable_files():
    data = SourceFileMutationData(path=path)
    data.load()
    for name, code in data.exit_code_by_key.items():
        status = status_by_exit_code[code]
        diff = get_diff_for_mutant(name, path=path) if status != "killed" else None
        out[name] = [str(path), status, diff]
print(json.dumps(out))
"""

_SPINNER = re.compile(r"^[\u2800-\u28ff]")  # mutmut's braille spinner starts every transient status line
_EQUIVALENT_REASON = re.compile(r"^`(?P<old>.+?)` -> `(?P<new>.*?)`: (?P<why>.+)$")


@dataclass
class Mutant:
    name: str
    module: str  # repository-relative path of the mutated file
    status: str
    diff: str | None


def module_key(name: str) -> str:
    """``scripts.froc.x_match_scan__mutmut_3`` -> ``scripts.froc`` (methods: ``...xǁClassǁmethod__mutmut_1``)."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def stage(name: str, group: Group, work: Path) -> Path:
    """A fresh copy of the group's sources and tests with its own pyproject.toml (mutmut caches in ``mutants/``)."""
    root = (ROOT / group.root).resolve()
    dest = work / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in group.copy:
        shutil.copytree(root / rel, dest / Path(rel).name, ignore=ignore)
    for rel in group.tests:
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{name}: test file {group.root}/{rel} is missing")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    for rel in group.shared:
        if not (ROOT / rel).is_file():
            raise FileNotFoundError(f"{name}: shared test helper {rel} is missing")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)

    def toml_list(values: tuple[str, ...] | list[str]) -> str:
        return json.dumps(list(values))

    packages = [Path(rel).name for rel in group.copy]
    (dest / "pyproject.toml").write_text(
        f"""[tool.mutmut]
source_paths = {toml_list(packages[:1])}
only_mutate = {toml_list(group.modules)}
also_copy = {toml_list(packages[1:])}
pytest_add_cli_args_test_selection = {toml_list(group.tests)}
use_git_change_detection = false

[tool.pytest.ini_options]
addopts = {json.dumps(PYTEST_ADDOPTS)}
markers = {toml_list(PYTEST_MARKERS)}
filterwarnings = ["ignore::DeprecationWarning", "ignore::FutureWarning"]
"""
    )
    return dest


def clean_env() -> dict[str, str]:
    """One thread per mutant process (at most --max-children run at once), no repository on the import path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("PYTHONPATH", None)
    return env


def run_mutmut(command: list[str], cwd: Path, every: float = 30.0) -> int:
    """Run mutmut; on a terminal its own spinner shows progress, in a log one status line every ``every`` s."""
    if sys.stdout.isatty():
        return subprocess.run(command, cwd=cwd, env=clean_env()).returncode
    proc = subprocess.Popen(command, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    last_print, latest, phase, buffer = 0.0, "", "", b""
    while chunk := proc.stdout.read1(4096):
        *lines, buffer = re.split(rb"[\r\n]", buffer + chunk)
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if _SPINNER.match(line):
                latest = line[1:].strip()
                new_phase = re.split(r"\d", latest, maxsplit=1)[0]
                if new_phase == phase and time.monotonic() - last_print < every:
                    continue
                phase = new_phase
                line, last_print = latest, time.monotonic()
            if line:
                print(f"   {line}", flush=True)
    if latest:
        print(f"   {latest}", flush=True)
    return proc.wait()


def run_group(name: str, group: Group, work: Path, max_children: int) -> float:
    """Stage the group and ``mutmut run`` it; the wall time in seconds."""
    dest = stage(name, group, work)
    mutmut = Path(sys.executable).with_name("mutmut")
    start = time.monotonic()
    returncode = run_mutmut([str(mutmut), "run", "--max-children", str(max_children)], dest)
    if returncode != 0:
        raise RuntimeError(f"{name}: mutmut run failed with exit status {returncode} (staged in {dest})")
    return time.monotonic() - start


def read_group(name: str, group: Group, work: Path) -> list[Mutant]:
    """Every mutant's status (and diff unless killed) from a finished run staged in ``work``."""
    dest = work / name
    if not (dest / "mutants").is_dir():
        raise FileNotFoundError(f"{name}: no mutmut results in {dest}; run without --report-only first")
    dump = subprocess.run(
        [sys.executable, "-c", _DUMP], cwd=dest, env=clean_env(), text=True, capture_output=True, check=True
    )
    by_key = {str(Path(m).with_suffix("")).replace("/", "."): m for m in group.modules}
    mutants = []
    for mutant, (path, status, diff) in json.loads(dump.stdout).items():
        if status in INCOMPLETE:
            raise RuntimeError(f"{name}: mutant {mutant} is '{status}': the run did not finish")
        rel = by_key.get(module_key(mutant), path)
        module = str(Path(group.root, rel)) if group.root != "." else rel
        mutants.append(Mutant(mutant, module, status, diff))
    return mutants


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    lines = diff.splitlines()
    removed = [ln[1:] for ln in lines if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:] for ln in lines if ln.startswith("+") and not ln.startswith("+++")]
    return removed, added


def is_listed_equivalent(mutant: Mutant, reason: str | None) -> tuple[bool, str | None]:
    """Whether ``reason`` (from the equivalent list) still describes this mutant's diff; else why not."""
    if reason is None:
        return False, None
    m = _EQUIVALENT_REASON.match(reason)
    if m is None:
        return False, f"{mutant.name}: reason must read '`<old>` -> `<new>`: <why>', got {reason!r}"
    if mutant.status not in SURVIVED:
        return False, f"{mutant.name} is listed as equivalent but is now '{mutant.status}': remove it from the list"
    removed, added = changed_lines(mutant.diff or "")
    if not any(m["old"] in ln for ln in removed) or not any(m["new"] in ln for ln in added):
        return False, f"{mutant.name}: diff no longer shows `{m['old']}` -> `{m['new']}` (stale entry?)"
    return True, None


def order(name: str) -> tuple[str, int]:
    """Sort key: function, then mutant number (``..._mutmut_10`` after ``..._mutmut_9``)."""
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number) if number.isdigit() else 0


def summarise(mutants: list[Mutant], equivalent: dict[str, str]) -> tuple[dict[str, dict], dict[str, Counter], list]:
    """Per module: the mutation.json entry, the count of every mutmut status, and the non-equivalent survivors."""
    results: dict[str, dict] = {}
    statuses: dict[str, Counter] = {}
    survivors: list[Mutant] = []
    for mutant in sorted(mutants, key=lambda m: (m.module, order(m.name))):
        entry = results.setdefault(mutant.module, {"killed": 0, "survived": 0, "equivalent": []})
        statuses.setdefault(mutant.module, Counter())[mutant.status] += 1
        listed, problem = is_listed_equivalent(mutant, equivalent.get(mutant.name))
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
        if mutant.status in KILLED:
            entry["killed"] += 1
        elif listed:
            entry["equivalent"].append(f"{mutant.name}: {equivalent[mutant.name]}")
        elif mutant.status in SURVIVED:
            entry["survived"] += 1
            survivors.append(mutant)
    for entry in results.values():
        scored = entry["killed"] + entry["survived"]
        entry["kill_rate_non_equivalent"] = round(entry["killed"] / scored, 4) if scored else 1.0
    return results, statuses, survivors


def write_survivors(path: Path, survivors: list[Mutant], other: list[Mutant]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("# Surviving mutants (not listed in tools/mutation_equivalent.json): each needs a test or a reason\n\n")
        for m in survivors:
            f.write(f"## {m.module} {m.name} ({m.status})\n{(m.diff or '').rstrip()}\n\n")
        if other:
            f.write("# Neither killed nor survived (timeouts, crashes): not counted in the kill rate.\n\n")
            for m in other:
                f.write(f"## {m.module} {m.name} ({m.status})\n{(m.diff or '').rstrip()}\n\n")


def print_table(results: dict[str, dict], statuses: dict[str, Counter]) -> None:
    header = f"{'module':<52} {'killed':>6} {'surv.':>6} {'equiv.':>6} {'other':>6} {'rate':>7}"
    print(header)
    print("-" * len(header))
    for module, entry in results.items():
        other = sum(n for s, n in statuses[module].items() if s not in KILLED | SURVIVED)
        print(
            f"{module:<52} {entry['killed']:>6} {entry['survived']:>6} {len(entry['equivalent']):>6} {other:>6} "
            f"{entry['kill_rate_non_equivalent']:>7.1%}"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groups", nargs="*", help=f"some of {', '.join(GROUPS)} (default: all)")
    p.add_argument("--max-children", type=int, default=2, help="mutmut worker processes (default 2)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imaging-bundles-mutation",
                   help="staging directory, outside the repository")  # fmt: skip
    p.add_argument("--min-rate", type=float, default=MIN_RATE)
    p.add_argument("--report-only", action="store_true", help="re-read the last run in --work (e.g. after editing "
                   "the equivalent list) instead of running mutmut")  # fmt: skip
    a = p.parse_args()
    groups = a.groups or list(GROUPS)
    if unknown := sorted(set(groups) - set(GROUPS)):
        p.error(f"unknown group(s) {unknown}; choose from {list(GROUPS)}")
    work = a.work.resolve()
    if work == ROOT or ROOT in work.parents:
        p.error(f"--work {work} is inside the repository: its conftest.py would import the unmutated bundles")
    equivalent: dict[str, str] = json.loads(EQUIVALENT_FILE.read_text()) if EQUIVALENT_FILE.is_file() else {}

    mutants: list[Mutant] = []
    total = time.monotonic()
    for name in groups:
        if not a.report_only:
            print(f"== {name}: mutating {', '.join(GROUPS[name].modules)} (max {a.max_children} children)", flush=True)
            wall = run_group(name, GROUPS[name], work, a.max_children)
        found = read_group(name, GROUPS[name], work)
        mutants += found
        if not a.report_only:
            print(f"== {name}: {len(found)} mutants in {wall:.0f} s", flush=True)
    known = {m.name for m in mutants}
    run_modules = {mod.replace("/", ".").removesuffix(".py") for g in groups for mod in GROUPS[g].modules}
    for name in sorted(set(equivalent) - known):
        if module_key(name) in run_modules:
            print(f"warning: {name} is listed as equivalent but mutmut made no such mutant", file=sys.stderr)

    results, statuses, survivors = summarise(mutants, equivalent)
    other = [m for m in mutants if m.status not in KILLED | SURVIVED]
    previous = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.is_file() and a.groups else {}
    merged = dict(sorted({**previous, **results}.items()))
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    write_survivors(SURVIVORS_FILE, survivors, other)

    print()
    print_table(results, statuses)
    print(f"\nwall time {time.monotonic() - total:.0f} s; {RESULTS_FILE.relative_to(ROOT)}, {SURVIVORS_FILE}")
    expected = {str(Path(GROUPS[g].root, m)) if GROUPS[g].root != "." else m for g in groups for m in GROUPS[g].modules}
    if missing := sorted(expected - set(results)):
        print(f"no mutants at all in {', '.join(missing)}: the staging or only_mutate is wrong")
        return 1
    failing = [m for m, e in results.items() if e["kill_rate_non_equivalent"] < a.min_rate]
    if failing:
        print(f"below {a.min_rate:.0%} of non-equivalent mutants killed: {', '.join(failing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
