"""The ids a user can override on the command line (``--<id> value``), read from a bundle's config files.

    cd bundles/brats_segmentation
    python ../../tools/config_ids.py configs/train.json configs/demo.json

MONAI's ``python -m monai.bundle run`` accepts ``--<id> <value>`` for any id, but nothing lists them: this prints
the top-level settings (numbers, strings, lists of plain values, ``$`` expressions) of the files layered left to
right as ``monai.bundle`` layers them, with the file that last set each one. Components (``_target_``), lists of
components, run sections (lists of ``$`` expressions) and ``imports`` are left out: they are the recipe's wiring,
not its knobs. Keys such as ``a#b#c`` that a later file sets inside a component are listed too, since
``--a#b#c value`` overrides them the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

WIRING = ("imports",)


def is_setting(value: Any) -> bool:
    """A plain value a user would type: not a component, not a list holding components or dicts, not a run
    section (a list of ``$`` expressions such as ``initialize`` or ``training``)."""
    if isinstance(value, dict):
        return False
    if isinstance(value, list):
        if value and all(isinstance(v, str) and v.startswith("$") for v in value):
            return False
        return all(not isinstance(v, (dict, list)) or is_setting(v) for v in value)
    return True


def settings(config_files: list[str | Path]) -> dict[str, tuple[Any, str]]:
    """``{id: (value, file name)}`` over the files, later files overriding earlier ones, in first-seen order."""
    found: dict[str, tuple[Any, str]] = {}
    for path in config_files:
        path = Path(path)
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise SystemExit(f"{path}: config file not found") from None
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise SystemExit(f"{path}: expected a JSON object of ids, got {type(config).__name__}")
        for key, value in config.items():
            if key in WIRING or not is_setting(value):
                continue
            found[key] = (value, path.name)
    return found


def shown(value: Any, width: int = 70) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config_files", nargs="+", help="config files in the order given to --config_file")
    args = parser.parse_args(argv)
    rows = settings(args.config_files)
    width = max((len(k) for k in rows), default=2)
    for key, (value, source) in rows.items():
        print(f"--{key:<{width}}  {shown(value):<70}  [{source}]")
    if not rows:
        print("no overridable settings found", file=sys.stderr)


if __name__ == "__main__":
    main()
