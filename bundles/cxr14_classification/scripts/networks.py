"""Networks: DenseNet-121 as in CheXNet, ResNet-50 (the transfer-learning comparison of the CXR literature), both
optionally from a local pretrained file and optionally frozen, and a small DenseNet for CPU demos. Nothing is ever
downloaded: pretrained weights must be given as a file path."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch
from monai.networks.nets import DenseNet, DenseNet121, ResNet

from common.checkpoint import CheckpointError, load_checkpoint, model_state

logger = logging.getLogger(__name__)
# torchvision names a dense layer's modules 'norm1' (or 'norm.1' in the 2017 file densenet121-a639ec97.pth);
# MONAI nests them under '.layers.'
_TV_LAYER = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(.+)$")
ARCHS = ("densenet121", "resnet50", "small")
# per architecture: the first convolution (adapted to the input channels by load_pretrained), the classification
# head (trained alone by freeze_backbone) and the Grad-CAM layer (last feature maps before pooling and the head)
STEM = {"densenet121": "features.conv0.weight", "small": "features.conv0.weight", "resnet50": "conv1.weight"}
HEAD = {"densenet121": "class_layers.out", "small": "class_layers.out", "resnet50": "fc"}
GRADCAM_LAYERS = {"densenet121": "class_layers.relu", "small": "class_layers.relu", "resnet50": "layer4"}


def torchvision_to_monai_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision DenseNet keys to MONAI's; 'classifier.*' becomes 'class_layers.out.*'."""
    renamed = {}
    for key, value in state.items():
        match = _TV_LAYER.match(key)
        if match:
            key = f"{match.group(1)}.layers.{match.group(2)}{match.group(3)}.{match.group(4)}"
        elif key.startswith("classifier."):
            key = "class_layers.out." + key[len("classifier.") :]
        renamed[key] = value
    return renamed


def load_pretrained(
    network: torch.nn.Module, path: str | os.PathLike, stem: str = STEM["densenet121"]
) -> torch.nn.Module:
    """Transfer learning from a local file: a torchvision ImageNet DenseNet-121 or ResNet-50, or a MONAI/bundle
    checkpoint of the same architecture.

    The first convolution (``stem``) is adapted to the network's input channels (RGB weights summed for 1 channel,
    so a grey image gives the response the RGB network gives to the same grey picture); layers whose shape differs
    (the 1000-class ImageNet head) keep their fresh initialisation. Fewer than half the weights matching is an
    error, because that means the file is for another architecture.
    """
    state = torchvision_to_monai_keys(model_state(load_checkpoint(path)))
    own = network.state_dict()
    if stem in state and stem in own and state[stem].shape[1] != own[stem].shape[1]:
        w = state[stem].sum(dim=1, keepdim=True)
        state[stem] = w.repeat(1, own[stem].shape[1], 1, 1) / own[stem].shape[1]
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) / 2:
        raise CheckpointError(f"{path}: only {len(usable)}/{len(own)} tensors fit this network (another architecture?)")
    skipped = sorted(set(own) - set(usable))
    network.load_state_dict(usable, strict=False)
    logger.info("loaded %d tensors from %s; kept fresh: %s", len(usable), path, skipped)
    return network


def freeze_backbone(network: torch.nn.Module, head: str = HEAD["densenet121"]) -> torch.nn.Module:
    """Train only the classification head (parameters under ``head``); batch-norm statistics still adapt in train
    mode."""
    for name, param in network.named_parameters():
        param.requires_grad = name.startswith(head + ".")
    return network


def resnet50(in_channels: int = 1, out_channels: int = 14) -> ResNet:
    """ResNet-50 exactly as torchvision's (7x7 stride-2 stem, max pool, bottlenecks [3, 4, 6, 3], projection
    shortcuts without bias, same parameter names), so torchvision's ImageNet file loads by name; 2D, ``in_channels``
    input channels, ``out_channels`` logits."""
    return ResNet(
        block="bottleneck",
        layers=[3, 4, 6, 3],
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=out_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
    )


def cxr_network(
    arch: str = "densenet121",
    in_channels: int = 1,
    out_channels: int = 14,
    pretrained_path: str | None = None,
    freeze: bool = False,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """DenseNet-121 ('densenet121', the CheXNet reference), ResNet-50 ('resnet50', see ``resnet50``) or 'small'
    (95k parameters, for CPU demos).

    'small' trains a batch of 16 x 128^2 in ~0.15 s on 2 CPU cores in fp32 (bf16 autocast is slower for it).
    ``dropout`` (before the head) exists for the DenseNets only.
    """
    if arch == "densenet121":
        net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, dropout_prob=dropout)
    elif arch == "small":
        net = DenseNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            init_features=16,
            growth_rate=12,
            block_config=(2, 3, 4, 3),
            dropout_prob=dropout,
        )
    elif arch == "resnet50":
        if dropout:
            raise ValueError(f"dropout={dropout}: ResNet-50 has no dropout layer (DenseNets only)")
        net = resnet50(in_channels, out_channels)
    else:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if pretrained_path:
        load_pretrained(net, pretrained_path, stem=STEM[arch])
    if freeze:
        freeze_backbone(net, head=HEAD[arch])
    return net
