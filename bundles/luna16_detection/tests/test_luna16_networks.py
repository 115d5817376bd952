"""``network_logits_def``: RetinaNet's classification maps as one tensor, in the detector's anchor order."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.bundle import ConfigParser
from monai.networks.nets.resnet import ResNet

from scripts.networks import AnchorLogits

BUNDLE = Path(__file__).resolve().parents[1]


def _tiny_retinanet(num_classes: int, use_list_output: bool) -> RetinaNet:
    torch.manual_seed(0)
    backbone = ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=3, n_input_channels=1, feed_forward=False)
    extractor = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    return RetinaNet(3, num_classes, 3, extractor, size_divisible=[16, 16, 8], use_list_output=use_list_output)


@pytest.mark.parametrize("use_list_output", [False, True])
def test_logits_follow_the_detector_anchor_order(use_list_output: bool) -> None:
    """Two classes, three anchors per position, three levels: channel c, index i is what RetinaNetDetector
    scores as anchor i, class c."""
    net = _tiny_retinanet(num_classes=2, use_list_output=use_list_output).eval()
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4], base_anchor_shapes=[[6, 8, 4]] * 3)
    detector = RetinaNetDetector(net, anchors, spatial_dims=3, num_classes=2, size_divisible=[16, 16, 8])
    x = torch.rand(2, 1, 32, 32, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = AnchorLogits(net)(x)
        head = net(x)
    cls_maps = head[net.cls_key] if isinstance(head, dict) else head[: len(head) // 2]
    expected = detector._reshape_maps(cls_maps)  # (B, sum(HWDA), C)
    assert out.shape == (2, 2, expected.shape[1])
    assert expected.shape[1] == 3 * sum(m[0, 0].numel() for m in cls_maps)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=0, atol=0)


def test_inference_config_wraps_network_def() -> None:
    """``network_logits_def`` holds the very ``network_def`` instance (weights loaded there are used), and its
    output matches ``outputs.pred`` of the metadata (channels, dtype)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["backbone"] = (
        "$monai.networks.nets.resnet.ResNet('basic', [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=3, "
        "n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7], feed_forward=False)"
    )
    wrapped = parser.get_parsed_content("network_logits_def")
    # the class as imported now: another bundle's tests in the same session may have re-imported `scripts`
    current = importlib.import_module("scripts.networks").AnchorLogits
    assert isinstance(wrapped, current) and wrapped.network is parser.get_parsed_content("network_def")
    pred = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]
    with torch.no_grad():
        out = wrapped.eval()(torch.rand(1, 1, 32, 32, 16))
    assert out.shape[1] == pred["num_channels"] == len(pred["channel_def"])
    assert str(out.dtype) == f"torch.{pred['dtype']}"
