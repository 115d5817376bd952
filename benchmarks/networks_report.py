"""Write the measured network comparisons (``benchmarks/results/networks.json``, written by
``python -m benchmarks.networks``, issue 19) into each bundle's docs/README.md, between ``<!-- networks:begin -->``
and ``<!-- networks:end -->``, so that the docs show exactly what the results file holds (issue 14). The markers
must already be in the README.

    python -m benchmarks.networks_report            # print the blocks
    python -m benchmarks.networks_report --write    # update the READMEs
    python -m benchmarks.networks_report --check    # exit 1 when a README differs from what the results give

Per bundle: the default network and each alternative as the mean ± sample sd over the training seeds of the
bundle's metrics (the ensemble tables' columns), parameters and inference time per item; then the headline
metric's difference, alternative minus default, seed by seed (paired: same data, split, fold and recipe).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.ensemble_report import HEADLINE, mean_sd
from benchmarks.speed.harness import markdown_table
from benchmarks.speed.report import blocks_cli, blocks_parser, stale_blocks

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "networks.json"
BEGIN, END = "<!-- networks:begin -->", "<!-- networks:end -->"

# per bundle: the table's metric columns (header, keys joined by " / ", decimals) and each network's row name
COLUMNS = {
    "brats_segmentation": [
        *((f"Dice {r}", (f"test_dice_{r}",), 3) for r in ("TC", "WT", "ET")),
        ("HD95 TC / WT / ET (mm)", tuple(f"test_hd95_{r}" for r in ("TC", "WT", "ET")), 1),
    ],
    "cxr14_classification": [("mean AUROC", ("mean_auroc",), 3)],
}
NAMES = {
    "brats_segmentation": {
        "default": "SegResNet (default, demo size)",
        "dynunet": "DynUNet (`network_unet.json`, demo size)",
    },
    "cxr14_classification": {
        "default": "small DenseNet (demo default, `arch: small`)",
        "resnet50": "ResNet-50 (`network_resnet50.json`)",
        "densenet121": "DenseNet-121 (`--arch densenet121`, the full-size default)",
    },
}
META = ("protocol", "machine", "command")


def alternatives(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The alternative networks of one bundle's entry (the other keys describe the run)."""
    return {name: alt for name, alt in entry.items() if name not in META}


def _cell(figures: dict[str, Any], keys: tuple[str, ...], decimals: int) -> str:
    if len(keys) == 1:
        return mean_sd(figures, keys[0], decimals)
    return " / ".join(f"{figures[k]:.{decimals}f}" for k in keys)


def _parameters(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def _seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 0.1 else f"{s:.2f} s"


def table(bundle: str, entry: dict[str, Any]) -> str:
    """Default first (its figures and speed from the first alternative's record: every alternative is paired with
    the same default fold 0 runs), then each alternative."""
    alts = alternatives(entry)
    first = next(iter(alts.values()))
    columns = COLUMNS[bundle]
    header = ["network", *(c[0] for c in columns), "parameters", "inference time per item"]
    speed = first["speed"]
    rows = [
        [
            NAMES[bundle]["default"],
            *(_cell(first["default"], keys, d) for _, keys, d in columns),
            _parameters(speed["parameters"]["default"]),
            f"{_seconds(speed['seconds_per_item']['default'])} (1x)",
        ]
    ]
    for name, alt in alts.items():
        s = alt["speed"]
        ratio = s["seconds_per_item"][name] / s["seconds_per_item"]["default"]
        rows.append(
            [
                NAMES[bundle].get(name, name),
                *(_cell(alt["alternative"], keys, d) for _, keys, d in columns),
                _parameters(s["parameters"][name]),
                f"{_seconds(s['seconds_per_item'][name])} ({ratio:.2f}x)",
            ]
        )
    return markdown_table(header, rows)


def paired(bundle: str, name: str, alt: dict[str, Any]) -> str:
    """One line: the headline metric's difference, alternative minus default, per seed, with mean ± sd."""
    header, key, decimals = HEADLINE[bundle]
    diffs = [a[key] - d[key] for a, d in zip(alt["alternative"]["per_seed"], alt["default"]["per_seed"])]
    mean = sum(diffs) / len(diffs)
    sd = (sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)) ** 0.5 if len(diffs) > 1 else None
    spread = f"{mean:+.{decimals}f}" + (f" ± {sd:.{decimals}f}" if sd is not None else "")
    seeds = ", ".join(f"seed {s} {x:+.{decimals}f}" for s, x in zip(alt["seeds"], diffs))
    higher = sum(x > 0 for x in diffs)
    return (
        f"- {NAMES[bundle].get(name, name)} minus the default, {header}: {seeds}; mean {spread} "
        f"(higher in {higher} of {len(diffs)} seeds)"
    )


def section(bundle: str, entry: dict[str, Any]) -> str:
    """The README block of one bundle's entry in networks.json."""
    alts = alternatives(entry)
    seeds = next(iter(alts.values()))["seeds"]
    m = entry["machine"]
    vm = f"{m['hypervisor']} VM" if m.get("hypervisor") else "bare metal"
    lines = [
        BEGIN,
        "<!-- generated by `python -m benchmarks.networks_report --write` from benchmarks/results/networks.json; "
        "tests/test_docs_numbers.py checks that they agree -->",
        f"**Measured** (`make benchmark-networks`: `python -m benchmarks.networks --bundles {bundle} --seeds "
        f"{' '.join(map(str, seeds))}` with `--work_dir` the ensemble benchmark's folder; finished {m['date_utc']} "
        f"on {m['cpu_model']} ({m['cpu_id']}), "
        f"{m['cpus']} CPUs ({vm}), torch {m['torch']}, MONAI {m['monai']}): fold 0 of the ensemble benchmark, once "
        f"per training seed ({', '.join(map(str, seeds))}), each paired with the default network's fold 0 of the "
        "same seed in `benchmarks/results/ensemble.json`; mean ± sample sd over the seeds. Raw figures and every "
        "command: [`benchmarks/results/networks.json`](../../../benchmarks/results/networks.json)"
        f", key `{bundle}`.",
        "",
        table(bundle, entry),
        "",
        *(paired(bundle, name, alt) for name, alt in alts.items()),
        f"- protocol (as recorded in the results file): {entry['protocol']}",
        END,
    ]
    return "\n".join(lines)


def bundles(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, entry) for name, entry in results.items() if name in COLUMNS]


def blocks(results: dict[str, Any]) -> dict[str, str]:
    """Bundle -> its rendered block, for every bundle of ``results``."""
    return {bundle: section(bundle, entry) for bundle, entry in bundles(results)}


def stale(results: dict[str, Any], docs: dict[str, str] | None = None) -> dict[str, str]:
    """Bundle -> what is wrong, for every bundle of ``results`` whose README lacks the block or differs from it."""
    return stale_blocks(blocks(results), BEGIN, END, docs)


def main() -> None:
    a = blocks_parser(__doc__.split("\n\n")[0], RESULTS).parse_args()
    blocks_cli(blocks(json.loads(Path(a.results).read_text())), BEGIN, END, a, "benchmarks.networks_report")


if __name__ == "__main__":
    main()
