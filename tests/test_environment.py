"""The setup a newcomer relies on: pins agree everywhere and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import monai
import torch

ROOT = Path(__file__).resolve().parents[1]


def pins_from_requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: '{line}' is not pinned with =="
            pins[name.lower()] = version
    return pins


def pins_from_environment_yml() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"^\s+- ([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_matches_requirements() -> None:
    assert pins_from_environment_yml() == pins_from_requirements()


def test_installed_versions_are_the_pinned_ones() -> None:
    pins = pins_from_requirements()
    assert torch.__version__.split("+")[0] == pins["torch"]
    assert monai.__version__ == pins["monai"]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    assert commands, "README.md has no command block"
    first_block = [c.split("#", 1)[0].strip() for c in commands[0].splitlines()]
    first_block = [c for c in first_block if c]
    assert first_block[:2] == ["make demo", "make test"], first_block
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, flags=re.M), ".ci/run must call `make test`"


def test_bundle_metadata_pins_match() -> None:
    """Every bundle's metadata.json names the monai/torch versions it is tested with."""
    import json

    pins = pins_from_requirements()
    for meta in sorted((ROOT / "bundles").glob("*/configs/metadata.json")):
        data = json.loads(meta.read_text())
        assert data["monai_version"] == pins["monai"], meta
        assert data["pytorch_version"] == pins["torch"], meta
        assert data["numpy_version"] == pins["numpy"], meta
