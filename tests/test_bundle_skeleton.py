"""The three bundles share one skeleton: the same run ids, the same multi-process lifecycle and device rule.

A maintainer who knows one bundle knows the others; these tests keep it that way (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir())
DETERMINISM = "$monai.utils.set_determinism(seed=@seed)"


def _json(bundle: Path, name: str) -> dict:
    return json.loads((bundle / "configs" / name).read_text())


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_run_ids(bundle: Path) -> None:
    """``training`` in train.json, ``evaluating`` in evaluate.json, ``run`` in inference.json; seeding in
    ``initialize``, so that every run id layered on train.json is seeded the same way."""
    train, evaluate, infer = (_json(bundle, n) for n in ("train.json", "evaluate.json", "inference.json"))
    assert train["initialize"] == [DETERMINISM]
    assert "training" in train and "run" not in train and "evaluating" not in train
    assert "evaluating" in evaluate and "run" not in evaluate and "training" not in evaluate
    assert "run" in infer and "training" not in infer and "evaluating" not in infer
    assert not any(DETERMINISM in item for item in train["training"] + evaluate["evaluating"])


def _without_network(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "network"}


def test_multi_gpu_train_is_the_same_everywhere() -> None:
    """One multi_gpu_train.json lifecycle (initialize / training / finalize, samplers, rank-0 handlers); only the
    DDP wrapper's options may differ (the detector has parameters unused in some steps)."""
    configs = {b.name: _json(b, "multi_gpu_train.json") for b in BUNDLES}
    first, *others = configs.values()
    for name, config in configs.items():
        assert _without_network(config) == _without_network(first), name
        network = {
            k: v for k, v in config["network"].items() if k not in ("broadcast_buffers", "find_unused_parameters")
        }
        assert network == {k: v for k, v in first["network"].items() if k in network}, name
    assert set(first) >= {"device", "initialize", "training", "finalize"}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_logging_handlers_are_last(bundle: Path) -> None:
    """multi_gpu_train.json keeps ``train#handlers[: -2]`` on ranks > 0: the last two must be the logging ones."""
    handlers = _json(bundle, "train.json")["train"]["handlers"]
    assert [h["_target_"] for h in handlers[-2:]] == ["StatsHandler", "TensorBoardStatsHandler"]


@pytest.fixture
def rank1_of_2_on_a_second_node(monkeypatch: pytest.MonkeyPatch):
    """A process group where this process is global rank 1 of 2 with LOCAL_RANK 0 (the only process of the
    second node), and CUDA reported available: a device chosen from the global rank would be ``cuda:1``."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_multi_gpu_device_follows_local_rank(bundle: Path, rank1_of_2_on_a_second_node, monkeypatch) -> None:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in ("train.json", "multi_gpu_train.json")])
    assert dist.get_rank() == 1
    assert parser.get_parsed_content("device") == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    parser.read_config([str(bundle / "configs" / n) for n in ("train.json", "multi_gpu_train.json")])
    assert parser.get_parsed_content("device") == torch.device("cuda:1")


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_single_process_device_rule(bundle: Path) -> None:
    """train/inference pick CUDA when there is one, else the CPU, with the same expression in every bundle."""
    expected = "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')"
    assert _json(bundle, "train.json")["device"] == expected
    assert _json(bundle, "inference.json")["device"] == expected
