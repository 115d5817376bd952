"""The demo's weights work with every documented command, exactly as `make demo` prints them and README shows them.

A short demo (``tools/demo.py``'s own steps, fewer cases and one epoch) trains each bundle; then the evaluate,
inference and export commands that ``make demo`` prints for it are run literally, through a shell, from the
repository root. Before ``configs/demo.json`` carried the demo network for every command, each bundle needed its
own flag (``--init_filters 8``, a second inference file, ...) and the README's commands failed on demo weights.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import HANG_GUARD
from tools.demo import BUNDLES, ROOT, reuse_commands, run_bundle  # noqa: E402

# fewer cases and one epoch; everything else is the demo's own spec (later arguments win)
SHORT = {
    "brats_segmentation": {"generate": ["--n_cases", "6"], "train": ["--epochs", "1", "--val_interval", "1"]},
    "cxr14_classification": {"generate": ["--n_patients", "60"], "train": ["--max_epochs", "1"]},
    "luna16_detection": {"generate": ["--n_scans", "20"], "train": ["--epochs", "1", "--val_interval", "1"]},
}
# what each documented command leaves behind, relative to the demo's folder
WRITES = {
    "brats_segmentation": ["eval/metrics.csv", "inference/BraTS2021_00000_seg.nii.gz"],
    "cxr14_classification": ["eval/metrics.json", "inference/predictions.csv"],
    "luna16_detection": ["eval/froc.json", "inference/submission.csv"],
}


def _shell(commands: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env["PYTHONPATH"] = str(ROOT)
    script = "set -e\n" + "\n".join(commands)
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_GUARD)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHORT))
def test_demo_weights_run_with_the_printed_commands(name: str, tmp_path: Path) -> None:
    bundle = BUNDLES / name
    work = tmp_path / "demo" / name
    result = run_bundle(bundle, work, steps=("generate", "train"), extra=SHORT[name])
    assert (work / "models" / "model.pt").is_file(), result
    commands = reuse_commands(bundle, work)
    for rel in WRITES[name] + ["models/model.ts"]:
        assert not (work / rel).exists()
    proc = _shell(commands, ROOT)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    for rel in WRITES[name]:
        assert (work / rel).is_file(), rel
    exported = torch.jit.load(str(work / "models" / "model.ts"))
    state = torch.load(work / "models" / "model.pt", weights_only=True)["model"]
    scripted = exported.state_dict()
    assert all(torch.equal(scripted[k], v) for k, v in state.items() if k in scripted), "export lost the weights"


def _readme_block(heading: str) -> list[str]:
    """The commands of the first bash block after ``heading`` in README.md, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [c for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def test_readme_shows_what_make_demo_prints() -> None:
    """README's demo-weights commands are the ones ``make demo`` prints (tested above), word for word."""
    shown = _readme_block("### Where the demo puts things")
    shown = [shlex.split(c.replace("source .venv/bin/activate && ", "")) for c in shown]
    printed = [shlex.split(c) for c in reuse_commands(BUNDLES / "brats_segmentation", ROOT / "work_dirs" / "demo" /
                                                      "brats_segmentation")]  # fmt: skip
    assert shown == printed
    assert json.loads((BUNDLES / "brats_segmentation" / "configs" / "demo_spec.json").read_text())["infer"][0] == "run"


OUTPUT_FLAGS = (
    "--output_dir",
    "--bundle_root",
    "--bundle_dir",
    "--filepath",
    "--output",
    "--out_dir",
    "--work_dir",
    "--label_output",
)
DOCS = [ROOT / "README.md", *sorted(BUNDLES.glob("*/docs/README.md")), ROOT / "docs" / "ARCHITECTURE.md"]


def _documented_outputs(doc: Path) -> list[tuple[Path, str]]:
    """(folder the command runs in, relative output path) for every output flag in the doc's bash blocks."""
    start = doc.parents[1] if doc.parent.name == "docs" and doc.parents[1].parent == BUNDLES else ROOT
    found = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
        cwd = start
        for line in block.replace("\\\n", " ").splitlines():
            words = line.split("#")[0].split()
            for i, word in enumerate(words):
                if word == "cd" and i + 1 < len(words):
                    cwd = (cwd / words[i + 1]).resolve()
                if word in OUTPUT_FLAGS and i + 1 < len(words):
                    value = words[i + 1]
                    if not (value.startswith(("/", "<", "$", "~")) or value == "." or value.isupper()):
                        found.append((cwd, value))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_outputs_are_ignored_by_git(doc: Path) -> None:
    """Every relative output path in the documented commands lands where git ignores it (a bundle's ``eval/``,
    ``models/``, ``data/``; ``work_dirs/``): following the README must not leave untracked files in the
    repository (``--output_dir pred`` once did)."""
    outputs = _documented_outputs(doc)
    for cwd, value in outputs:
        target = (cwd / value).resolve()
        assert target.is_relative_to(ROOT), (doc.name, value)
        check = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(target.relative_to(ROOT))], cwd=ROOT)
        assert check.returncode == 0, f"{doc.relative_to(ROOT)}: {value} (from {cwd.relative_to(ROOT)}) is not ignored"


def test_readme_demo_table_is_the_committed_benchmark() -> None:
    """The numbers README says `make demo` prints are the benchmark's committed values (benchmarks/expected.json,
    reproduced by `make benchmark` in CI), not a copy that drifts when the benchmark is re-measured."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| bundle | held-out synthetic result |") :].split("\n\n")[0]
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in table.splitlines()[2:]}
    expected = {
        b: {k: v["expected"] for k, v in m.items()}
        for b, m in json.loads((ROOT / "benchmarks" / "expected.json").read_text())["bundles"].items()
    }
    cxr, brats, luna = expected["cxr14_classification"], expected["brats_segmentation"], expected["luna16_detection"]

    def shown(row: str, pattern: str) -> list[float]:
        match = re.search(pattern, rows[row])
        assert match, (row, pattern)
        return [float(g) for g in match.groups()]

    # README rounds to its printed digits (0.5835 may read 0.583 or 0.584): within half a unit of the last digit
    close = pytest.approx
    assert shown("cxr14_classification", r"mean AUROC (\d\.\d+)") == close([cxr["mean_auroc"]], abs=5.01e-4)
    dice = [brats[f"test_dice_{r}"] for r in ("TC", "WT", "ET")]
    hd95 = [brats[f"test_hd95_{r}"] for r in ("TC", "WT")]
    pattern = r"Dice TC ([\d.]+) / WT ([\d.]+) / ET ([\d.]+), HD95 ([\d.]+) / ([\d.]+) / "
    values = shown("brats_segmentation", pattern)
    assert values[:3] == close(dice, abs=5.01e-4) and values[3:] == close(hd95, abs=5.01e-2)
    assert shown("luna16_detection", r"CPM (\d\.\d+)") == close([luna["cpm"]], abs=5.01e-4)


def test_brats_docs_dice_is_the_committed_benchmark() -> None:
    """The BraTS docs' test-split Dice row is the benchmark's committed value (same run, same rounding rule)."""
    text = (BUNDLES / "brats_segmentation" / "docs" / "README.md").read_text()
    row = re.search(r"\| Dice, BraTS rule \(`test_dice`\) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text)
    assert row, "the BraTS docs lost their test_dice row"
    brats = json.loads((ROOT / "benchmarks" / "expected.json").read_text())["bundles"]["brats_segmentation"]
    expected = [brats[f"test_dice_{r}"]["expected"] for r in ("TC", "WT", "ET")]
    assert [float(v) for v in row.groups()] == pytest.approx(expected, abs=5.01e-4)
