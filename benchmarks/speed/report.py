"""Write the measured speed tables (benchmarks/results/speed_*.json) into each bundle's docs/README.md "Speed"
section (between ``<!-- speed:begin -->`` and ``<!-- speed:end -->``; inserted before "## References" the first
time), so the docs show exactly what the JSON holds, with command, machine and date.

    .venv/bin/python -m benchmarks.speed.report            # print the sections
    .venv/bin/python -m benchmarks.speed.report --write    # update the READMEs

The table itself (its columns and the inference/training rows) is also built here, by the speed scripts, so that
all three bundles' tables share one layout; they store it in their JSON as ``table_markdown``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.speed import harness

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
BUNDLES = {"brats": "brats_segmentation", "luna16": "luna16_detection", "cxr": "cxr14_classification"}
REFERENCE = {
    "brats": "MONAI model-zoo `brats_mri_segmentation` settings (SegResNet, sliding window 240x240x160, overlap 0.5, "
    "fp32, plain `Dataset`), rebuilt from MONAI components",
    "luna16": "MONAI model-zoo `lung_nodule_ct_detection` settings (RetinaNet ResNet-50 FPN, overlap 0.25, fp32), "
    "rebuilt from MONAI components",
    "cxr": "CheXNet settings (DenseNet-121, 224 px, fp32, batch 16, plain `Dataset`), rebuilt from MONAI components",
}


# ------------------------------------------------------------------------------------------------ the table


def table(rows: list[list[Any]], agreement: str = "agreement") -> str:
    """Markdown table of the rows under the columns every speed table has; only the agreement column's title
    differs between bundles."""
    header = ["measure", "reference", "ours", "speed-up", "target", agreement]
    header += ["peak RSS MB (ref / ours)", "share of the peak in its precision (ref / ours)"]
    return harness.markdown_table(header, rows)


def inference_row(
    label: str,
    infer: dict[str, dict[str, Any]],
    name: str,
    target: float,
    agreement: str,
    memory: dict[str, float] | None,
    per: str = "median_s",
) -> list[Any]:
    """Reference and side ``name``: ``per`` (``median_s``, or e.g. ``per_image_s``), the speed-up of the medians,
    the target speed-up, the agreement text, the peak memory (``memory=None``: not measured for this side, "-")
    and the shares of the peak."""
    ref, ours = infer["reference"], infer[name]
    return [
        label,
        ref[per],
        ours[per],
        harness.ratio(ref["median_s"], ours["median_s"]),
        target,
        agreement,
        _memory(memory, "infer", name),
        _fraction(infer, name),
    ]


def training_row(label: str, train: dict[str, dict[str, Any]], name: str, memory: dict[str, float] | None) -> list[Any]:
    """Reference and side ``name``: samples/s, their ratio, the 2x target, no agreement, peak memory
    (``memory=None``: not measured for this side, "-") and the shares of the peak."""
    ref, ours = train["reference"]["samples_per_s"], train[name]["samples_per_s"]
    return [
        label,
        ref,
        ours,
        harness.ratio(ours, ref),
        2.0,
        "-",
        _memory(memory, "train", name),
        _fraction(train, name),
    ]


def _memory(memory: dict[str, float] | None, task: str, name: str) -> str:
    """Peak RSS in MB as "ref / ours" ("nan" where --no_memory skipped the runs)."""
    if memory is None:
        return "-"
    nan = float("nan")
    return f"{memory.get(f'{task}_reference', nan):.0f} / {memory.get(f'{task}_{name}', nan):.0f}"


def _fraction(timings: dict[str, dict[str, Any]], name: str) -> str:
    """Each side's share of the peak of its own precision as "ref / ours", e.g. "0.31 fp32 / 0.12 bf16"."""

    def share(t: dict[str, Any]) -> str:
        return f"{t['fraction_of_peak']:.2f} {t['precision']}" if t["fraction_of_peak"] is not None else t["precision"]

    return " / ".join(share(timings[k]) for k in ("reference", name))


# ------------------------------------------------------------------------------------------------ the READMEs


def machine_line(m: dict) -> str:
    flags = m["bf16_flags"]
    shown = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items() if k != "avx2")
    return (
        f"{m['cpu_model']}, {m['cpus']} CPUs ({m.get('hypervisor') or 'bare metal'} VM), {shown}; "
        f"torch {m['torch']} ({m['torch_threads']} threads), MONAI {m['monai']}; {m['date_utc']}"
    )


def section(short: str, notes: str = "") -> str:
    r = json.loads((RESULTS / f"speed_{short}.json").read_text())
    lines = [
        BEGIN,
        "## Speed",
        "",
        f"Our configs against the {REFERENCE[short]}, same weights and same synthetic inputs, timed in one process "
        "(one warm-up per side, then runs interleaved reference/ours; medians). Peak memory: resident set of a "
        "fresh process per side. Share of the peak: network FLOPs (torch `FlopCounterMode`) per second over this "
        "CPU's practical peak in the precision that side computes in, the faster of a 2048x2048 `torch.matmul` and "
        "a 64-channel 3x3x3 channels-last `conv3d` measured in the same run (GFLOP/s: "
        + "; ".join(
            f"{p} " + ", ".join(f"{k} {v}" for k, v in ks.items()) for p, ks in r["kernel_peaks_gflops"].items()
        )
        + "; each side's rate over the fp32 peak is `fraction_of_fp32_peak` in the JSON).",
        "",
        f"- command (repository root): `{r['command']}` (also `make benchmark-speed`)",
        f"- machine: {machine_line(r['machine'])}",
        f"- our precision on this CPU: {r['our_amp']} (`common.amp`: bf16 only where the CPU has native bf16)",
        f"- sizes: {json.dumps(r['sizes'])}",
        f"- raw results: `benchmarks/results/speed_{short}.json`",
        "",
        r["table_markdown"],
        "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    if (RESULTS / f"loader_{short}.json").is_file():
        lines += [*loader_lines(short), ""]
    lines.append(END)
    return "\n".join(lines)


def loader_lines(short: str) -> list[str]:
    """The training data pipeline alone (``benchmarks/results/loader_<short>.json``, ``benchmarks.speed.loader``)."""
    r = json.loads((RESULTS / f"loader_{short}.json").read_text())
    disk = r["disk"]
    best = max(r["steady_items_per_s"], key=r["steady_items_per_s"].get)
    return [
        "### Training data pipeline alone",
        "",
        "Decode + transforms, no network: each loader iterated for whole epochs over the same files, variants "
        "interleaved epoch by epoch; steady = median items/s over epochs 2.. (an item: "
        + {"brats": "one case's crop", "luna16": "one scan's patches", "cxr": "one image"}[short]
        + "). A GPU whose training step takes items faster than a loader's steady rate waits for that loader.",
        "",
        f"- command (repository root): `{r['command']}` (also `make benchmark-speed`)",
        f"- machine: {machine_line(r['machine'])}",
        f"- sizes: {json.dumps(r['sizes'])}; DataLoader workers: {json.dumps(r['workers'])}",
        f"- raw results: `benchmarks/results/loader_{short}.json`",
        *([f"- note: {r['note']}"] if r.get("note") else []),
        "",
        loader_table(r),
        "",
        f"- disk cache (`--cache_dir`): {disk['cache_bytes'] / 1e6:.0f} MB for {disk['source_bytes'] / 1e6:.0f} MB "
        f"of source files ({disk['cache_bytes'] / max(disk['source_bytes'], 1):.1f}x); fastest steady loader here: "
        f"{best}, {r['steady_items_per_s'][best]:.3g} items/s",
    ]


def loader_table(r: dict[str, Any]) -> str:
    """The loader benchmark's table: workers, first-epoch and steady items/s (3 significant digits), steady ratio."""
    rows = [
        [
            name,
            workers,
            f"{r['first_epoch_items_per_s'][name]:.3g}",
            f"{r['steady_items_per_s'][name]:.3g}",
            f"{r['speedup_vs_reference'][name]:.2f}x",
        ]
        for name, workers in r["workers"].items()
    ]
    header = ["loader", "workers", "first epoch items/s", "steady items/s", "steady vs reference"]
    return harness.markdown_table(header, rows)


def readme(bundle: str) -> Path:
    return ROOT / "bundles" / bundle / "docs" / "README.md"


def replace_block(
    doc: str, text: str, begin: str = BEGIN, end: str = END, before: str | None = "\n## References"
) -> str:
    """``doc`` with its block from ``begin`` to ``end`` (markers included) replaced by ``text``, which carries the
    markers itself. A doc without the markers gets ``text`` before the heading ``before`` (or at the end when the
    doc has no such heading); with ``before=None`` the markers must be there (ValueError)."""
    if begin in doc and end in doc:
        return doc[: doc.index(begin)] + text + doc[doc.index(end) + len(end) :]
    if before is None:
        raise ValueError(f"no {begin} ... {end} block")
    if before in doc:
        i = doc.index(before)
        return doc[: i + 1] + text + "\n\n" + doc[i + 1 :]
    return doc.rstrip("\n") + "\n\n" + text + "\n"


def block_of(doc: str, begin: str = BEGIN, end: str = END) -> str | None:
    """The block of ``doc`` from ``begin`` to ``end``, markers included (None without the markers)."""
    if begin not in doc or end not in doc:
        return None
    return doc[doc.index(begin) : doc.index(end) + len(end)]


def block_difference(doc: str, text: str, name: str, begin: str = BEGIN, end: str = END) -> str | None:
    """None when the block of ``doc`` (called ``name`` in the message) from ``begin`` to ``end`` is ``text``; else
    what is wrong: no such block, or a unified diff of the doc's block against ``text``."""
    old = block_of(doc, begin, end)
    if old is None:
        return f"{name}: no {begin} ... {end} block (add the markers)"
    if old == text:
        return None
    return "\n".join(difflib.unified_diff(old.splitlines(), text.splitlines(), name, "results", lineterm=""))


def stale_blocks(blocks: dict[str, str], begin: str, end: str, docs: dict[str, str] | None = None) -> dict[str, str]:
    """Bundle -> what is wrong, for every bundle of ``blocks`` (bundle -> rendered block) whose README
    (``docs[bundle]``, else the file) lacks the block or holds another one (a unified diff, README vs rendered)."""
    wrong = {}
    for bundle, text in blocks.items():
        doc = docs[bundle] if docs and bundle in docs else readme(bundle).read_text()
        problem = block_difference(doc, text, f"bundles/{bundle}/docs/README.md", begin, end)
        if problem:
            wrong[bundle] = problem
    return wrong


def blocks_parser(description: str, results: Path) -> argparse.ArgumentParser:
    """The options of every ``benchmarks.*_report`` command: ``--results``, and ``--write`` or ``--check``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--results", default=str(results))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update the bundles' docs/README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when a README's block differs from the results")
    return p


def blocks_cli(blocks: dict[str, str], begin: str, end: str, args: argparse.Namespace, module: str) -> None:
    """What a ``benchmarks.*_report`` command does with its rendered blocks (bundle -> block) and its parsed
    ``blocks_parser`` options: ``--check`` prints the differences and exits 1 when a README differs from
    ``args.results``; ``--write`` replaces each README's block (markers must be there); else prints the blocks."""
    if args.check:
        wrong = stale_blocks(blocks, begin, end)
        for text in wrong.values():
            print(text)
        if wrong:
            sys.exit(f"{', '.join(wrong)}: the docs differ from {args.results}; python -m {module} --write")
        print(f"docs agree with {args.results}")
    elif args.write:
        for bundle, text in blocks.items():
            path = readme(bundle)
            doc = path.read_text()
            new = replace_block(doc, text, begin, end, before=None)
            if new != doc:
                path.write_text(new)
                print(f"updated {path.relative_to(ROOT)}")
    else:
        for text in blocks.values():
            print(text, "\n")


def update_readme(bundle: str, text: str) -> Path:
    path = readme(bundle)
    path.write_text(replace_block(path.read_text(), text))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="update the bundles' docs/README.md")
    p.add_argument(
        "--notes",
        default=str(RESULTS / "speed_notes.json"),
        help="JSON file {short name: markdown notes under the table}; the committed one holds the decisions",
    )
    a = p.parse_args()
    notes = json.loads(Path(a.notes).read_text())
    for short, bundle in BUNDLES.items():
        if not (RESULTS / f"speed_{short}.json").is_file():
            print(f"(no results for {short} yet)")
            continue
        text = section(short, notes.get(short, ""))
        if a.write:
            print(f"updated {update_readme(bundle, text)}")
        else:
            print(text, "\n")


if __name__ == "__main__":
    main()
