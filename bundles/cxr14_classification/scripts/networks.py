"""Networks: DenseNet-121 as in CheXNet (optionally from a local pretrained file, optionally frozen) and a small
DenseNet for CPU demos. Nothing is ever downloaded: pretrained weights must be given as a file path."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch
from monai.networks.nets import DenseNet, DenseNet121

from common.checkpoint import CheckpointError, load_checkpoint, model_state

logger = logging.getLogger(__name__)
# torchvision names a dense layer's modules 'norm1' (or 'norm.1' in the 2017 file densenet121-a639ec97.pth);
# MONAI nests them under '.layers.'
_TV_LAYER = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(.+)$")


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


def load_pretrained(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Transfer learning from a local file (torchvision ImageNet DenseNet-121 or a MONAI DenseNet checkpoint).

    The first convolution is adapted to the network's input channels (RGB weights summed for 1 channel, so a
    grey image gives the response the RGB network gives to the same grey picture); layers whose shape differs
    (the 1000-class ImageNet head) keep their fresh initialisation. Fewer than half the weights matching is an
    error, because that means the file is for another architecture.
    """
    state = torchvision_to_monai_keys(model_state(load_checkpoint(path)))
    own = network.state_dict()
    conv0 = "features.conv0.weight"
    if conv0 in state and conv0 in own and state[conv0].shape[1] != own[conv0].shape[1]:
        w = state[conv0].sum(dim=1, keepdim=True)
        state[conv0] = w.repeat(1, own[conv0].shape[1], 1, 1) / own[conv0].shape[1]
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) / 2:
        raise CheckpointError(f"{path}: only {len(usable)}/{len(own)} tensors fit this network (another architecture?)")
    skipped = sorted(set(own) - set(usable))
    network.load_state_dict(usable, strict=False)
    logger.info("loaded %d tensors from %s; kept fresh: %s", len(usable), path, skipped)
    return network


def freeze_backbone(network: torch.nn.Module) -> torch.nn.Module:
    """Train only the classification head ('class_layers'); batch-norm statistics still adapt in train mode."""
    for name, param in network.named_parameters():
        param.requires_grad = name.startswith("class_layers")
    return network


def cxr_network(
    arch: str = "densenet121",
    in_channels: int = 1,
    out_channels: int = 14,
    pretrained_path: str | None = None,
    freeze: bool = False,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """DenseNet-121 ('densenet121', the CheXNet reference) or 'small' (95k parameters, for CPU demos).

    'small' trains a batch of 16 x 128^2 in ~0.15 s on 2 CPU cores in fp32 (bf16 autocast is slower for it).
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
    else:
        raise ValueError(f"arch must be 'densenet121' or 'small', got {arch!r}")
    if pretrained_path:
        load_pretrained(net, pretrained_path)
    if freeze:
        freeze_backbone(net)
    return net
