"""Each bundle ships its own ``scripts`` package (MONAI Label requires that name), so one pytest process
must switch which bundle's ``scripts`` is importable before collecting or running a bundle's tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BUNDLES = Path(__file__).resolve().parent / "bundles"


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
