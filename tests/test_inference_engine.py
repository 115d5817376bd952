"""``common.openvino.inference_engine``: OpenVINO on the CPU when installed, torch on CUDA, clear errors otherwise."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from common.amp import amp_settings
from common.openvino import OpenVINONetwork, inference_engine, inference_network


def _without_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))


def test_auto_is_openvino_on_cpu_and_torch_on_cuda() -> None:
    pytest.importorskip("openvino")
    assert inference_engine("auto", "cpu") == "openvino"
    assert inference_engine("auto", torch.device("cuda:0")) == "torch"
    assert inference_engine("torch", "cpu") == "torch"


def test_auto_without_openvino_is_torch_and_asking_for_it_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_openvino(monkeypatch)
    assert inference_engine("auto", "cpu") == "torch"
    with pytest.raises(ImportError, match="openvino package"):
        inference_engine("openvino", "cpu")


def test_openvino_on_cuda_and_unknown_engines_are_refused() -> None:
    with pytest.raises(ValueError, match="runs on the CPU"):
        inference_engine("openvino", "cuda")
    with pytest.raises(ValueError, match="engine must be one of"):
        inference_engine("onnx", "cpu")


def test_inference_network_wraps_or_prepares(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    monkeypatch.delenv("BUNDLES_AMP", raising=False)
    net = torch.nn.Conv3d(1, 1, 3)
    amp = amp_settings("cpu")
    wrapped = inference_network(net, "cpu", amp, "auto", use_amp="false")  # as `--use_amp false` arrives
    assert isinstance(wrapped, OpenVINONetwork) and wrapped.network is net and wrapped.precision == "f32"
    assert inference_network(net, "cpu", amp, "torch") is net  # prepared in place (channels-last on the CPU)
