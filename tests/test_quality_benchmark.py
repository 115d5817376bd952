"""benchmarks/quality.py: the regression check CI relies on, and the committed expected values it checks against."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quality():
    return importlib.import_module("benchmarks.quality")


def test_check_flags_regressions_in_the_metric_direction() -> None:
    q = _quality()
    expected = {
        "dice": {"expected": 0.80, "tolerance": 0.05, "better": "higher"},
        "hd95": {"expected": 10.0, "tolerance": 5.0, "better": "lower"},
        "cpm": {"expected": 0.85, "tolerance": 0.1},
        "gone": {"expected": 0.5, "tolerance": 0.1},
    }
    status = lambda measured: {r["metric"]: r["status"] for r in q.check(measured, expected)}  # noqa: E731
    assert status({"dice": 0.76, "hd95": 14.9, "cpm": 0.75}) == {
        "dice": "ok",
        "hd95": "ok",
        "cpm": "ok",
        "gone": "missing",
    }
    s = status({"dice": 0.7499, "hd95": 15.01, "cpm": 0.96})
    assert s["dice"] == "REGRESSION" and s["hd95"] == "REGRESSION"
    assert s["cpm"].startswith("better")  # above the band: expected.json is stale, reported but not a failure
    assert status({"dice": 0.9, "hd95": 4.0, "cpm": 0.8})["hd95"].startswith("better")


def test_committed_expected_values_are_complete() -> None:
    """Every bundle has measured expected values (not placeholders) with a direction and a positive tolerance."""
    expected = json.loads((ROOT / "benchmarks" / "expected.json").read_text())
    bundles = {p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "demo_spec.json").is_file()}
    assert set(expected["bundles"]) == bundles
    assert expected["measured_on"]
    for metrics in expected["bundles"].values():
        assert metrics
        for spec in metrics.values():
            assert isinstance(spec["expected"], float) and math.isfinite(spec["expected"])
            assert spec["tolerance"] > 0 and spec.get("better", "higher") in ("higher", "lower")
