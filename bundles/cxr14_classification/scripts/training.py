"""Class weights for the label imbalance, which train.json passes to the BCE loss (``class_weighted``)."""

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
