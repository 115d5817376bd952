"""Mixed-precision settings: what each device gets, that they train without NaN, and that they switch off."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from common.amp import (
    ENV_VAR,
    AmpSettings,
    AutocastInferer,
    amp_settings,
    cpu_bf16_conv3d_correct,
    cpu_supports_bf16,
)


def tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv3d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 1, 3, padding=1)
    )


def test_cpu_choice_follows_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    settings = amp_settings("cpu")
    assert settings.dtype == (torch.bfloat16 if cpu_supports_bf16() else None)
    assert not settings.grad_scaling and settings.trainer_amp_kwargs == {}
    assert settings.channels_last  # measured faster on CPU in fp32 and bf16
    monkeypatch.setattr("common.amp.cpu_supports_bf16", lambda: False)
    assert amp_settings("cpu").dtype is None


@pytest.mark.parametrize("switch, expected", [("false", False), ("true", True), (False, False), (True, True)])
def test_channels_last_switch_from_the_command_line(switch: str | bool, expected: bool) -> None:
    """``--channels_last false`` arrives as the string "false", which must not switch channels-last on."""
    assert amp_settings("cpu", enabled=False, channels_last=switch).channels_last is expected


def test_emulated_bf16_is_not_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr("common.amp.cpu_flags", lambda: {"avx512f", "avx512bw", "avx512_vnni"})
    assert not cpu_supports_bf16()
    monkeypatch.setattr("common.amp.cpu_flags", lambda: {"avx512f", "avx512bw", "avx512_bf16"})
    assert cpu_supports_bf16()
    monkeypatch.setattr("common.amp.cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert cpu_supports_bf16()


def test_bf16_conv3d_check_catches_wrong_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard against PyTorch issue #169688: a bf16 conv3d that returns wrong values turns autocast off."""
    cpu_bf16_conv3d_correct.cache_clear()
    assert cpu_bf16_conv3d_correct()  # this machine's bf16 conv3d agrees with fp32 (bf16 rounding only)
    real = torch.nn.Conv3d._conv_forward

    def wrong_in_bf16(self, x, weight, bias):  # the bug's signature: garbage only under bf16 autocast
        out = real(self, x, weight, bias)
        return out * 1.5 if torch.is_autocast_enabled("cpu") else out

    monkeypatch.setattr(torch.nn.Conv3d, "_conv_forward", wrong_in_bf16)
    cpu_bf16_conv3d_correct.cache_clear()
    assert not cpu_bf16_conv3d_correct()
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr("common.amp.cpu_supports_bf16", lambda: True)
    assert amp_settings("cpu").dtype is None
    monkeypatch.undo()
    cpu_bf16_conv3d_correct.cache_clear()


def test_cuda_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    fp16 = amp_settings("cuda")
    assert fp16.dtype == torch.float16 and fp16.grad_scaling
    assert fp16.trainer_amp_kwargs == {"dtype": torch.float16}
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    bf16 = amp_settings("cuda")
    assert bf16.dtype == torch.bfloat16 and not bf16.grad_scaling


@pytest.mark.parametrize("how", ["config", "env"])
def test_disabling(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv(ENV_VAR, "0")
        settings = amp_settings("cpu")
    else:
        monkeypatch.delenv(ENV_VAR, raising=False)
        settings = amp_settings("cpu", enabled=False)
    assert not settings.enabled
    seen = []
    net = tiny_net()
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    AutocastInferer(SimpleInferer(), settings)(torch.randn(1, 2, 8, 8, 8), net)
    assert seen == [torch.float32]


def test_autocast_inferer_runs_bf16_and_returns_float32() -> None:
    settings = AmpSettings("cpu", torch.bfloat16, channels_last=True)  # what a CPU with native bf16 gets
    net = settings.prepare_network(tiny_net(), "cpu")
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    inferer = AutocastInferer(SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2), settings)
    out = inferer(torch.randn(1, 2, 12, 12, 12), net)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 12, 12, 12)
    assert set(seen) == {torch.bfloat16}
    assert inferer.roi_size == (8, 8, 8)  # the wrapped inferer's settings stay visible


@pytest.mark.parametrize(
    "settings",
    [amp_settings("cpu"), AmpSettings("cpu", torch.bfloat16, channels_last=True), AmpSettings("cpu", None)],
    ids=["chosen-here", "bf16", "fp32"],
)
def test_training_learns_without_nan(settings: AmpSettings) -> None:
    torch.manual_seed(0)
    net = settings.prepare_network(tiny_net(), "cpu")
    inferer = AutocastInferer(SimpleInferer(), settings)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    x = torch.randn(4, 2, 10, 10, 10)
    target = (x[:, :1] > 0).float()  # learnable: sign of the first channel
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn(inferer(x, net), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0]


def test_describe_names_the_choice() -> None:
    assert "off" in AmpSettings("cpu", None).describe()
    assert "bfloat16" in AmpSettings("cuda", torch.bfloat16).describe()
    assert "gradient scaling" in AmpSettings("cuda", torch.float16).describe()
