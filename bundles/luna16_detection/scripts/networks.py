"""RetinaNet's head outputs as one tensor, for tools that expect a network returning a tensor.

MONAI's ``RetinaNet`` (``network_def``) returns a dict of per-level lists (``{"classification": [...],
"box_regression": [...]}``), which ``python -m monai.bundle verify_net_in_out`` cannot check (it reads
``output.shape``). ``AnchorLogits`` (``network_logits_def`` in ``configs/inference.json``) wraps the same network
and returns the classification logits of every anchor as ``(B, num_classes, N)``: channel = class (the order of
``outputs.pred.channel_def`` in ``metadata.json``), ``N`` = all anchors of all feature-map levels, ordered as
``RetinaNetDetector`` flattens them (level, then the spatial position, then the anchor), so index ``i`` is the
``i``-th anchor of the detector's anchor generator. Box decoding and NMS stay in the detector.
"""

from __future__ import annotations

import torch
from torch import nn


class AnchorLogits(nn.Module):
    """``network``'s classification maps, ``(B, A*C, *spatial)`` per level, as one ``(B, C, sum(prod(spatial)*A))``.

    The wrapped network is held, not copied: weights loaded into ``network_def`` are the ones used here (its
    state-dict keys gain the prefix ``network.``).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.num_classes = int(network.num_classes)
        self.cls_key = str(getattr(network, "cls_key", "classification"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        head = self.network(images)
        if isinstance(head, dict):
            maps = head[self.cls_key]
        else:  # use_list_output=True: first half classification maps, second half box regression maps
            maps = list(head)[: len(head) // 2]
        flat = []
        for m in maps:
            b, c = m.shape[0], self.num_classes
            per_anchor = m.view(b, -1, c, *m.shape[2:])  # (B, A, C, *spatial)
            dims = per_anchor.dim()
            # (B, *spatial, A, C) -> (B, prod(spatial)*A, C): RetinaNetDetector._reshape_maps' order
            flat.append(per_anchor.permute(0, *range(3, dims), 1, 2).reshape(b, -1, c))
        return torch.cat(flat, dim=1).transpose(1, 2)
