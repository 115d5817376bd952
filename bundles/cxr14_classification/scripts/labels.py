"""The 14 NIH ChestX-ray14 findings in the one fixed order used for every label vector and output channel, and
the class weights that counter their imbalance."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"


class UnknownLabelError(ValueError):
    """A finding name outside the 14 NIH labels (misspelt, or from another dataset)."""


def parse_findings(text: str, source: str = "") -> list[str]:
    """Split NIH's ``Finding Labels`` field (``A|B`` or ``No Finding``); unknown names raise, naming ``source``."""
    names = [t.strip() for t in text.split("|") if t.strip()]
    unknown = [n for n in names if n not in LABELS and n != NO_FINDING]
    if unknown:
        raise UnknownLabelError(f"{source}: unknown finding label(s) {unknown}; expected {NO_FINDING!r} or {LABELS}")
    if NO_FINDING in names and len(names) > 1:
        raise UnknownLabelError(f"{source}: {NO_FINDING!r} combined with findings {names}")
    return [n for n in names if n != NO_FINDING]


def multi_hot(findings: Iterable[str]) -> list[int]:
    """0/1 vector over LABELS."""
    present = set(findings)
    return [int(name in present) for name in LABELS]


def findings_text(vector: Iterable[int]) -> str:
    """Inverse of ``multi_hot`` in NIH's ``Finding Labels`` spelling."""
    names = [name for name, v in zip(LABELS, vector) if v]
    return "|".join(names) if names else NO_FINDING


def select_labels(datalist: dict[str, Any], split: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """The items of ``datalist[split]`` with their label vector reduced to ``names``, in that order, by name.

    A model may predict only some of the findings (torchxrayvision's CheXpert model: 7 of the 14), so evaluation
    scores exactly its outputs against the matching columns of the datalist (whose ``"labels"`` names them); the
    findings it lacks are left out, never scored as zeros. With the bundle's own 14 labels nothing changes."""
    have = list(datalist.get("labels", LABELS))
    unknown = [name for name in names if name not in have]
    if unknown:
        raise UnknownLabelError(f"model label(s) {unknown} are not in the datalist's labels {have}")
    columns = [have.index(name) for name in names]
    return [{**item, "label": [item["label"][i] for i in columns]} for item in datalist[split]]


def pos_weight(items: Sequence[dict[str, Any]], max_weight: float = 20.0) -> torch.Tensor:
    """BCE ``pos_weight`` per label = negatives / positives (capped), so rare findings (Hernia) are not ignored."""
    labels = torch.tensor([it["label"] for it in items], dtype=torch.float32)
    positives = labels.sum(0)
    negatives = len(labels) - positives
    return (negatives / positives.clamp(min=1.0)).clamp(1.0, max_weight)
