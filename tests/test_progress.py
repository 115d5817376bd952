"""Progress bars only in a terminal: the TTY / rank / BUNDLES_PROGRESS decision and the handler it drives."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from ignite.engine import Engine, Events

from common import progress
from common.progress import ProgressHandler, show_progress

ROOT = Path(__file__).resolve().parents[1]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_tty_decides_by_default():
    assert show_progress(_Stream(True), env={}) is True
    assert show_progress(_Stream(False), env={}) is False
    assert show_progress(object(), env={}) is False  # no isatty at all (some log wrappers)
    closed = io.StringIO()
    closed.close()
    assert show_progress(closed, env={}) is False  # io raises ValueError on a closed stream


@pytest.mark.parametrize("value, tty, expected", [("0", True, False), ("off", True, False), ("1", False, True)])
def test_environment_overrides(value, tty, expected):
    assert show_progress(_Stream(tty), env={"BUNDLES_PROGRESS": value}) is expected


def test_only_rank0_draws(monkeypatch):
    monkeypatch.setattr(progress, "_is_rank0", lambda: False)
    assert show_progress(_Stream(True), env={}) is False
    assert show_progress(_Stream(True), env={"BUNDLES_PROGRESS": "1"}) is False


def test_default_reads_stderr(monkeypatch):
    monkeypatch.delenv("BUNDLES_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", _Stream(False))
    assert show_progress() is False
    monkeypatch.setattr("sys.stderr", _Stream(True))
    assert show_progress() is True


def _engine() -> Engine:
    return Engine(lambda engine, batch: [{"loss": 0.25 * batch}])


def test_handler_attaches_nothing_without_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "show_progress", lambda: False)
    engine, handler = _engine(), ProgressHandler(desc="train")
    before = len(engine._event_handlers[Events.ITERATION_COMPLETED])
    handler.attach(engine)
    assert handler.pbar is None and len(engine._event_handlers[Events.ITERATION_COMPLETED]) == before


def test_handler_draws_loss_in_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress, "show_progress", lambda: True)
    engine = _engine()
    handler = ProgressHandler(desc="train", loss_transform=lambda out: out[0]["loss"])
    handler.attach(engine)
    engine.run([1, 2, 3], max_epochs=1)
    err = capsys.readouterr().err
    assert handler.pbar is not None and "train" in err and "loss=0.75" in err


@pytest.mark.parametrize("bundle", sorted(p.parents[1].name for p in (ROOT / "bundles").glob("*/configs/train.json")))
def test_every_trainer_and_validator_has_the_handler(bundle):
    train = json.loads((ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
    targets = [h.get("_target_") if isinstance(h, dict) else h for h in train["train"]["handlers"]]
    assert "common.progress.ProgressHandler" in targets
    # before ValidationHandler: the training bar closes (EPOCH_COMPLETED) before validation starts
    assert targets.index("common.progress.ProgressHandler") < targets.index("ValidationHandler")
    assert train["validate"]["handlers"][0]["_target_"] == "common.progress.ProgressHandler"
