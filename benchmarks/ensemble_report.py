"""Write the measured folds / ensembles / TTA tables (``benchmarks/results/ensemble.json``, written by
``python -m benchmarks.ensemble``, issue 19) into each bundle's docs/README.md, between ``<!-- ensemble:begin -->``
and ``<!-- ensemble:end -->``, so that the docs show exactly what the results file holds, with the command, the
machine, the dates and the protocol that produced it (issue 14). The markers must already be in the README.

    python -m benchmarks.ensemble_report            # print the blocks
    python -m benchmarks.ensemble_report --write    # update the READMEs
    python -m benchmarks.ensemble_report --check    # exit 1 when a README differs from what the results give

Per bundle: each mode (single fold, single fold + TTA, K-fold ensemble, ensemble + TTA, and the variants the file
holds: 4 flips instead of 8, both box fusions for LUNA16) as the mean ± sample sd over the training seeds of the
bundle's headline metrics, the network passes and the inference cost relative to one model without TTA; with more
than one seed, the headline metric's change against the single fold seed by seed (the seeds share data, splits and
folds, so the differences are paired).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.speed.harness import markdown_table
from benchmarks.speed.report import blocks_cli, blocks_parser, replace_block, stale_blocks

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ensemble.json"
BEGIN, END = "<!-- ensemble:begin -->", "<!-- ensemble:end -->"

# per bundle: the table's metric columns (header, key, decimals), the headline metric of the paired table
# (header, key, decimals), and how TTA is named given its passes per model
COLUMNS = {
    "brats_segmentation": [
        *((f"Dice {r}", f"test_dice_{r}", 3) for r in ("TC", "WT", "ET")),
        ("Dice mean", "test_dice", 3),
        *((f"HD95 {r} mm", f"test_hd95_{r}", 1) for r in ("TC", "WT", "ET")),
    ],
    "cxr14_classification": [("mean AUROC", "mean_auroc", 3)],
    "luna16_detection": [("CPM", "cpm", 3)],  # + every sensitivity the file holds (sensitivity_columns)
}
HEADLINE = {
    "brats_segmentation": ("mean Dice (`test_dice`)", "test_dice", 3),
    "cxr14_classification": ("mean AUROC", "mean_auroc", 3),
    "luna16_detection": ("CPM", "cpm", 3),
}
FUSION_NAMES = {"wbf": "WBF", "nms": "NMS"}


def tta_name(bundle: str, flips: int) -> str:
    return "mirror TTA" if bundle == "cxr14_classification" else f"TTA, {flips} flips"


def mean_sd(figures: dict[str, Any], key: str, decimals: int) -> str:
    """``mean ± sd`` of one figure of an ``across_seeds`` dict; the mean alone when there is no sd (one seed)."""
    mean = f"{figures[key]:.{decimals}f}"
    sd = figures.get("sd", {}).get(key)
    return mean if sd is None else f"{mean} ± {sd:.{decimals}f}"


def sensitivity_columns(figures: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(header, key, decimals) of each ``sensitivity@<rate>fp`` figure, by rate."""
    keys = sorted((k for k in figures if k.startswith("sensitivity@")), key=lambda k: float(k[12:-2]))
    rates = {0.125: "1/8", 0.25: "1/4", 0.5: "1/2"}
    return [(f"sens. @{rates.get(float(k[12:-2]), f'{float(k[12:-2]):g}')} FP", k, 3) for k in keys]


def folds_of(entry: dict[str, Any]) -> int:
    settings = next(iter(entry["runs"].values()))["settings"]
    return settings["folds"] if "folds" in settings else settings["luna16_folds"]


def rows_of(bundle: str, entry: dict[str, Any]) -> list[tuple[str, str | None, dict[str, Any], str]]:
    """(mode label, fusion or None, figures, cost key) of every mode in the entry, in table order."""
    k, passes = folds_of(entry), entry["cost"]["network_passes"]
    variants = entry.get("variants", {})
    modes = [("single", entry["single"], 1), ("tta", entry["tta"], 1)]
    modes += [("tta_axes", variants["tta_axes"], 1)] if "tta_axes" in variants else []
    modes += [("ensemble", entry["ensemble"], k), ("ensemble_tta", entry["ensemble_tta"], k)]
    modes += [("ensemble_tta_axes", variants["ensemble_tta_axes"], k)] if "ensemble_tta_axes" in variants else []
    rows = []
    for mode, figures, models in modes:
        fusions = figures.get("fusion", {})
        for fusion in fusions or [None]:
            cost_key = f"{mode}_{fusion}" if fusion else mode
            flips = round(passes[cost_key] / models)
            label = "single fold" if models == 1 else f"{k}-fold ensemble"
            label += f" (mean of the {k} folds)" if mode == "single" else ""
            label += f" + {tta_name(bundle, flips)}" if "tta" in mode else ""
            rows.append((label, fusion, fusions[fusion] if fusion else figures, cost_key))
    return rows


def main_table(bundle: str, entry: dict[str, Any]) -> str:
    rows = rows_of(bundle, entry)
    columns = COLUMNS[bundle] + (sensitivity_columns(entry["single"]) if bundle == "luna16_detection" else [])
    cost = entry["cost"]
    fused = any(fusion for _, fusion, _, _ in rows)
    default = entry.get("fusion_default")
    header = ["mode", *(["fusion"] if fused else []), "seeds", *(c[0] for c in columns)]
    header += ["network passes", "inference cost (x single fold)"]
    table = []
    for label, fusion, figures, cost_key in rows:
        fusion_cell = (
            "-" if not fusion else FUSION_NAMES.get(fusion, fusion) + (" (default)" if fusion == default else "")
        )
        multiplier = "1 (reference)" if cost_key == "single" else mean_sd(cost["multiplier"], cost_key, 1)
        table.append(
            [
                label,
                *([fusion_cell] if fused else []),
                str(len(entry["seeds"])),
                *(mean_sd(figures, key, d) for _, key, d in columns),
                f"{cost['network_passes'][cost_key]:.0f}",
                multiplier,
            ]
        )
    return markdown_table(header, table)


def paired_table(bundle: str, entry: dict[str, Any]) -> str:
    """The headline metric of every mode minus the single fold's, seed by seed, and the mean of those differences
    (one more decimal than the main table)."""
    _, key, d = HEADLINE[bundle]
    d += 1
    seeds = entry["seeds"]
    single = [s[key] for s in entry["single"]["per_seed"]]
    header = ["mode", *(f"seed {s}" for s in seeds), "mean", "higher than single fold"]
    table = []
    for label, fusion, figures, _ in rows_of(bundle, entry)[1:]:
        diffs = [s[key] - b for s, b in zip(figures["per_seed"], single)]
        label += f", {FUSION_NAMES.get(fusion, fusion)}" if fusion else ""
        better = f"{sum(x > 0 for x in diffs)} of {len(diffs)} seeds"
        table.append([label, *(f"{x:+.{d}f}" for x in diffs), f"{statistics.fmean(diffs):+.{d}f}", better])
    return markdown_table(header, table)


def command(bundle: str, entry: dict[str, Any]) -> str:
    """The benchmark command with the settings every seed of the entry ran with (repository root)."""
    settings = next(iter(entry["runs"].values()))["settings"]
    args = ["python -m benchmarks.ensemble", f"--bundles {bundle}", "--seeds " + " ".join(map(str, entry["seeds"]))]
    for name, value in settings.items():
        if name == "bundle_version":  # not an argument: the bundle's version at the time (in the table's notes)
            continue
        shown = f"'{json.dumps(value, separators=(',', ':'))}'" if isinstance(value, list) else str(value)
        args.append(f"--{name} {shown}")
    return " ".join(args)


def bundle_version(entry: dict[str, Any]) -> str:
    """ ", bundle version X" when the runs recorded it (the version fixes the synthetic twin and the recipe)."""
    versions = sorted({str(r["settings"].get("bundle_version")) for r in entry["runs"].values()})
    return "" if versions == ["None"] else f", bundle version {' / '.join(versions)}"


def machine(entry: dict[str, Any]) -> str:
    """The machine(s) of the seeds' runs, and the time each seed finished."""

    def one(m: dict[str, Any]) -> str:
        vm = f"{m['hypervisor']} VM" if m.get("hypervisor") else "bare metal"
        return f"{m['cpu_model']} ({m['cpu_id']}), {m['cpus']} CPUs ({vm}), torch {m['torch']}, MONAI {m['monai']}"

    machines = list(dict.fromkeys(one(r["machine"]) for r in entry["runs"].values()))
    dates = "; ".join(f"seed {s} {r['machine']['date_utc']}" for s, r in entry["runs"].items())
    return f"{' / '.join(machines)}; each seed's run finished: {dates}"


def section(bundle: str, entry: dict[str, Any]) -> str:
    """The README block of one bundle's entry in ensemble.json."""
    seeds = entry["seeds"]
    n = len(seeds)
    cost = entry["cost"]
    unit = next(k for k in cost if k.startswith("seconds_per_"))[len("seconds_per_") :]
    items = cost[f"{unit}s"]
    spread = (
        f"mean ± sample sd over {n} training seeds ({', '.join(map(str, seeds))}); the data, splits and folds are "
        "the same for every seed, each seed trains every fold again"
        if n > 1
        else f"**one training seed so far** (seed {seeds[0]}): no spread over seeds, a single run"
    )
    lines = [
        BEGIN,
        "<!-- generated by `python -m benchmarks.ensemble_report --write` from benchmarks/results/ensemble.json; "
        "tests/test_docs_numbers.py checks that they agree -->",
        f"**Measured** on the seeded synthetic benchmark, test set of {items:.0f} {unit}s: {spread}. Raw figures, "
        "every command and its time: [`benchmarks/results/ensemble.json`](../../../benchmarks/results/ensemble.json)"
        f", key `{bundle}`.",
        "",
        main_table(bundle, entry),
        "",
    ]
    if n > 1:
        header, _, _ = HEADLINE[bundle]
        lines += [
            f"Change of the {header} against the single fold, seed by seed (paired: same data and folds):",
            "",
            paired_table(bundle, entry),
            "",
        ]
    if entry.get("note"):
        lines.append(f"- note in the results file: {entry['note']}")
    if "fusion_default" in entry:
        better = entry["fusion_better_on_ensemble_tta"]
        lines.append(
            f"- box fusion: the configs' default is {FUSION_NAMES.get(entry['fusion_default'])}; the higher CPM with "
            f"ensemble + TTA came from {FUSION_NAMES.get(better, better)} (`fusion_better_on_ensemble_tta`); the "
            "documented evaluate commands wrote the same detections as the benchmark (`cli_check`): "
            + ("yes" if entry["cli_check_agree"] else "**no**")
        )
    if n == 1:
        run = next(iter(entry["runs"].values()))
        intervals = [f"single fold {k} [{f['cpm_ci95'][0]:.3f}, {f['cpm_ci95'][1]:.3f}]"
                     for k, f in enumerate(run["single"].get("per_fold", [])) if f.get("cpm_ci95")]  # fmt: skip
        for mode, name in (("ensemble", "ensemble"), ("ensemble_tta", "ensemble + TTA")):
            for fusion, f in run.get(mode, {}).get("fusion", {}).items():
                if f.get("cpm_ci95"):
                    lo, hi = f["cpm_ci95"]
                    intervals.append(f"{name} {FUSION_NAMES.get(fusion, fusion)} [{lo:.3f}, {hi:.3f}]")
        if intervals:
            lines.append(f"- CPM 95% bootstrap intervals (test scans resampled): {'; '.join(intervals)}")
    seconds = mean_sd(cost[f"seconds_per_{unit}"], "single", 4 if unit == "image" else 3)
    plain = ""
    if "plain inference.json" in cost["multiplier"]:
        plain = f"; `inference.json`'s own inferer: {mean_sd(cost['multiplier'], 'plain inference.json', 2)}x"
    lines.append(f"- inference cost 1 = one model without TTA, {seconds} s per {unit}{plain}")
    if "cost_seeds" in entry:  # some seeds' timings were disturbed: the costs are the other seeds' only
        excluded = "; ".join(f"seed {s}: {why}" for s, why in entry["cost_excluded"].items())
        lines.append(f"- costs over seeds {', '.join(map(str, entry['cost_seeds']))} only ({excluded})")
    lines += [
        f"- command (repository root): `{command(bundle, entry)}`{bundle_version(entry)}",
        f"- machine: {machine(entry)}",
        f"- protocol (as recorded in the results file): {entry['protocol']}",
        END,
    ]
    return "\n".join(lines)


def bundles(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The bundles' entries of the results file (other top-level keys, if any, are not tables of a bundle)."""
    return [(name, entry) for name, entry in results.items() if name in COLUMNS]


def updated(bundle: str, entry: dict[str, Any], doc: str) -> str:
    """``doc`` (a bundle's README) with its ensemble block rendered from ``entry`` (ValueError without markers)."""
    return replace_block(doc, section(bundle, entry), BEGIN, END, before=None)


def blocks(results: dict[str, Any]) -> dict[str, str]:
    """Bundle -> its rendered block, for every bundle of ``results``."""
    return {bundle: section(bundle, entry) for bundle, entry in bundles(results)}


def stale(results: dict[str, Any], docs: dict[str, str] | None = None) -> dict[str, str]:
    """Bundle -> what is wrong, for every bundle of ``results`` whose README (``docs[bundle]``, else the file) lacks
    the block or holds another one than the results give (a unified diff, README block vs rendered)."""
    return stale_blocks(blocks(results), BEGIN, END, docs)


def main() -> None:
    a = blocks_parser(__doc__.split("\n\n")[0], RESULTS).parse_args()
    blocks_cli(blocks(json.loads(Path(a.results).read_text())), BEGIN, END, a, "benchmarks.ensemble_report")


if __name__ == "__main__":
    main()
