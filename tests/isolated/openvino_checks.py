"""``common.openvino.OpenVINONetwork``: OpenVINO's forward pass of a torch network, weights loaded the bundle way.

Run by ``tests/test_openvino.py`` in a pytest process of its own (see there why); alone:
``python -m pytest tests/isolated/openvino_checks.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import SegResNet

from common.amp import cpu_supports_bf16
from common.checkpoint import load_weights
from common.openvino import OpenVINONetwork, calibration_windows, openvino_precision

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


def test_network_traced_small_and_reshaped_gives_torch_outputs_at_the_input_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The network is converted at ``trace_shape`` (32 per spatial axis at most) and reshaped to the input's shape:
    on an input larger than that on two axes, f32 logits equal torch's within 1e-4."""
    import openvino as ov

    traced: list[tuple[int, ...]] = []
    convert = ov.convert_model

    def spy(*args, **kwargs):
        traced.append(tuple(kwargs["example_input"].shape))
        return convert(*args, **kwargs)

    monkeypatch.setattr(ov, "convert_model", spy)
    x = torch.randn(1, 4, 64, 48, 24, generator=torch.Generator().manual_seed(3))
    engine = OpenVINONetwork(_segresnet(3), precision="f32")
    with torch.no_grad():
        torch.testing.assert_close(engine(x), _segresnet(3).eval()(x), atol=1e-4, rtol=1e-4)
    assert traced == [(1, 4, 32, 32, 24)]


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


def test_int8_engine_quantizes_the_convolutions_and_thresholds_close_to_fp32() -> None:
    """int8 (NNCF post-training quantization from calibration windows smaller than the input, the graph reshaped
    after quantization): quantizers really sit in the graph, and the thresholded masks still agree with torch
    fp32's on at least 97% of voxels (random weights put many voxels near the threshold; the speed benchmark
    measures agreement with trained weights at the real size)."""
    pytest.importorskip("nncf")
    gen = torch.Generator().manual_seed(3)
    windows = [torch.randn(1, 4, 24, 24, 16, generator=gen) for _ in range(3)]
    x = torch.randn(1, 4, 32, 32, 24, generator=gen)
    net = _segresnet(4).eval()
    engine = OpenVINONetwork(_segresnet(4), precision="int8", calibration=lambda: windows)
    with torch.no_grad():
        ref, out = net(x), engine(x)
    assert engine.quantizers[tuple(x.shape)] >= 10  # SegResNet(init_filters 8) has 25 convolutions
    assert ((out > 0) == (ref > 0)).float().mean() >= 0.97
    assert (out - ref).abs().max() > 1e-4  # not the fp32 graph


def test_int8_needs_calibration_windows_of_one_shape_with_the_inputs_channels() -> None:
    with pytest.raises(ValueError, match="needs calibration windows"):
        OpenVINONetwork(_segresnet(0), precision="int8")
    for windows in ([torch.zeros(1, 3, 16, 16, 16)], [torch.zeros(1, 4, 16, 16, 16), torch.zeros(1, 4, 16, 16, 8)]):
        engine = OpenVINONetwork(_segresnet(0), precision="int8", calibration=windows)
        with pytest.raises(
            ValueError, match=r"calibration windows of shape .*\(1, 4\) of the input \(1, 4, 32, 32, 24\)"
        ):
            engine(torch.zeros(1, 4, 32, 32, 24))


def test_calibration_windows_are_what_the_sliding_window_feeds_the_network() -> None:
    """Each preprocessed image is centre-cropped or zero-padded to one window, symmetric as the sliding window
    pads a smaller image; no more than ``n`` images are read."""
    image = torch.arange(4 * 20 * 40 * 24, dtype=torch.float32).reshape(4, 20, 40, 24)
    dataset = [{"image": image}, {"image": image + 1}, {"image": image + 2}]
    windows = calibration_windows(dataset, (32, 32, 24), n=2)
    assert len(windows) == 2 and windows[0].shape == (1, 4, 32, 32, 24) and type(windows[0]) is torch.Tensor
    torch.testing.assert_close(windows[1][0, :, 6:26], image[:, :, 4:36] + 1)  # padded 6+6 along x, cropped 4+4 y
    assert windows[0][0, :, :6].abs().max() == 0 and windows[0][0, :, 26:].abs().max() == 0


def test_int8_float_modules_keep_their_convolutions_out_of_int8() -> None:
    """``float_modules``: exactly the named modules' convolutions are left unquantized (two fewer quantizers
    in this network), the rest stays int8; a module name that is not in the network is a clear error."""
    pytest.importorskip("nncf")
    gen = torch.Generator().manual_seed(5)
    windows = [torch.randn(1, 4, 24, 24, 16, generator=gen) for _ in range(2)]
    x = torch.randn(1, 4, 32, 32, 24, generator=gen)
    plain = OpenVINONetwork(_segresnet(6), precision="int8", calibration=windows)
    kept = OpenVINONetwork(
        _segresnet(6), precision="int8", calibration=windows, float_modules=["convInit", "conv_final"]
    )
    with torch.no_grad():
        plain(x), kept(x)
    assert [c.split("/")[0] for c in kept.float_convolutions] == [
        "__module.convInit.conv",
        "__module.conv_final.2.conv",
    ]
    assert plain.float_convolutions == [] and kept.quantizers[tuple(x.shape)] == plain.quantizers[tuple(x.shape)] - 2
    assert "but those of convInit, conv_final" in kept.describe()
    with pytest.raises(ValueError, match=r"float_modules \['conv_last'\]: no such module in SegResNet"):
        OpenVINONetwork(_segresnet(6), precision="int8", calibration=windows, float_modules=["conv_last"])
