"""Small helpers the training configs call: class weights for the label imbalance and transform-list flattening."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def pos_weight(items: Sequence[dict[str, Any]], max_weight: float = 20.0) -> torch.Tensor:
    """BCE ``pos_weight`` per label = negatives / positives (capped), so rare findings (Hernia) are not ignored."""
    labels = torch.tensor([it["label"] for it in items], dtype=torch.float32)
    positives = labels.sum(0)
    negatives = len(labels) - positives
    return (negatives / positives.clamp(min=1.0)).clamp(1.0, max_weight)


def flatten(transforms: Sequence[Any]) -> list[Any]:
    """Transforms list where entries may themselves be lists (the shared ``preprocessing`` block)."""
    flat: list[Any] = []
    for t in transforms:
        flat.extend(flatten(t) if isinstance(t, (list, tuple)) else [t])
    return flat
