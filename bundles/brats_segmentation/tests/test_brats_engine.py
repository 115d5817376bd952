"""Which engine BraTS inference and evaluation run the network in (``engine``, ``common.openvino``).

Only the choice is checked here, in the suite's process (nothing is compiled or run); that an
OpenVINO engine gives torch's output is checked in tests/isolated/openvino_checks.py, and that evaluation scores
what inference writes, with the default engine, in test_brats_segmentation.py::test_train_resume_evaluate_infer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import SegResNet

from common.amp import cpu_supports_bf16
from common.openvino import OpenVINONetwork

BUNDLE = Path(__file__).resolve().parents[1]
pytest.importorskip("openvino")


def _network(configs: list[str], network_id: str = "network", **override: object) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(BUNDLE), "init_filters": 8, **override})
    return parser.get_parsed_content(network_id)


CONFIGS = [["inference.json"], ["train.json", "evaluate.json"]]


@pytest.mark.parametrize("configs", CONFIGS)
def test_cpu_runs_openvino_in_bf16_where_native_and_f32_without_amp(
    configs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BUNDLES_AMP", raising=False)
    network = _network(configs)
    assert isinstance(network, OpenVINONetwork) and isinstance(network.network, SegResNet)
    assert network.precision == ("bf16" if cpu_supports_bf16() else "f32")
    assert _network(configs, use_amp=False).precision == "f32"  # --use_amp false
    monkeypatch.setenv("BUNDLES_AMP", "0")
    assert _network(configs).precision == "f32"


@pytest.mark.parametrize("configs", CONFIGS)
def test_engine_torch_gives_the_torch_network(configs: list[str]) -> None:
    network = _network(configs, engine="torch")
    assert isinstance(network, SegResNet)
    assert network.convInit.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)  # amp.prepare_network


def test_model_zoo_weights_run_in_torch_fp32_as_the_model_zoo() -> None:
    network = _network(["inference.json", "weights_model_zoo.json"])
    assert isinstance(network, SegResNet) and network.convInit.conv.weight.is_contiguous()


@pytest.mark.parametrize(
    "configs",
    [["inference.json", "inference_ensemble.json"], ["train.json", "evaluate.json", "evaluate_ensemble.json"]],
)
def test_fold_ensembles_run_each_fold_in_the_same_engine(configs: list[str], tmp_path: Path) -> None:
    """So that an ensemble of one fold without TTA computes what the plain configs compute."""
    from common.checkpoint import atomic_save

    ckpts = []
    for k in range(2):
        ckpts.append(str(tmp_path / f"fold{k}.pt"))
        atomic_save({"model": SegResNet(init_filters=8, in_channels=4, out_channels=3).state_dict()}, ckpts[-1])
    networks = _network(configs, "ensemble_networks", ckpt_paths=ckpts)
    assert [type(n) for n in networks] == [OpenVINONetwork] * 2
    assert networks[0].network is not networks[1].network  # one copy per fold
    torch_networks = _network(configs, "ensemble_networks", ckpt_paths=ckpts, engine="torch")
    assert [type(n) for n in torch_networks] == [SegResNet] * 2
