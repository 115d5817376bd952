"""``common.openvino.OpenVINONetwork``: OpenVINO's forward pass of a torch network, weights loaded the bundle way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import SegResNet

from common.amp import cpu_supports_bf16
from common.checkpoint import load_weights
from common.openvino import OpenVINONetwork, openvino_precision

pytest.importorskip("openvino")


def _segresnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=8, in_channels=4, out_channels=3)


def test_f32_engine_gives_torch_fp32_outputs_and_follows_loaded_weights(tmp_path: Path) -> None:
    """f32: OpenVINO's logits equal torch's within 1e-4; weights loaded after a first call (as
    ``common.checkpoint.load_weights`` does in a bundle's ``run``) are the ones the next call uses."""
    x = torch.randn(1, 4, 32, 32, 24, generator=torch.Generator().manual_seed(0))
    first, second = _segresnet(0).eval(), _segresnet(1).eval()
    engine = OpenVINONetwork(_segresnet(0), precision="f32")
    with torch.no_grad():
        torch.testing.assert_close(engine(x), first(x), atol=1e-4, rtol=1e-4)
        torch.save({"model": second.state_dict()}, tmp_path / "model.pt")
        load_weights(engine, tmp_path / "model.pt")
        torch.testing.assert_close(engine(x), second(x), atol=1e-4, rtol=1e-4)
        assert (second(x) - first(x)).abs().max() > 1e-2  # the two weight sets really differ
    assert engine.state_dict().keys() == second.state_dict().keys()  # checkpoints keep the torch layout


def test_auto_precision_follows_the_cpu() -> None:
    assert openvino_precision("auto") == ("bf16" if cpu_supports_bf16() else "f32")
    with pytest.raises(ValueError, match="precision must be one of"):
        openvino_precision("fp16")


@pytest.mark.skipif(not cpu_supports_bf16(), reason="no native bf16 on this CPU")
def test_bf16_engine_thresholds_like_fp32() -> None:
    """bf16: the thresholded masks agree with fp32's on at least 99% of voxels (REFERENCE.md section 7 measured
    Dice 0.9976 at the model zoo's size)."""
    x = torch.randn(1, 4, 48, 48, 32, generator=torch.Generator().manual_seed(1))
    net = _segresnet(2).eval()
    with torch.no_grad():
        ref = net(x) > 0
        out = OpenVINONetwork(_segresnet(2), precision="bf16")(x) > 0
    assert (out == ref).float().mean() >= 0.99
