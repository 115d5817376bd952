"""Grad-CAM and its localisation score: the generator's box file (NIH header, boxes around the drawn lesions), the
scores against hand-computed values, the random baseline, and Grad-CAM's orientation and sign on hand-built networks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import scripts.synthetic as synthetic
from scripts.labels import parse_findings
from scripts.prepare import read_entries

NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"  # the line as it is in NIH's BBox_List_2017.csv
BOXED = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Pleural_Thickening",
    "Hernia",
)


# ------------------------------------------------------------------------------------------- the generator's boxes


def test_generated_box_file_has_the_nih_header_and_a_box_per_drawn_lesion(tmp_path: Path) -> None:
    size = 64
    out = synthetic.generate(tmp_path / "data", n_patients=40, size=size, seed=3, n_dicom=0)
    lines = (out / "BBox_List_2017.csv").read_text().splitlines()
    assert lines[0] == NIH_BBOX_HEADER
    with open(out / "BBox_List_2017.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert rows and all(len(r) == 9 and r[6:] == ["", "", ""] for r in rows)  # 9 fields, as the header
    entries = read_entries(out / "Data_Entry_2017.csv")
    findings = {e["Image Index"]: set(parse_findings(e["Finding Labels"])) for e in entries}
    written = {p.name for p in out.glob("images_*/images/*.png")}
    boxed: dict[str, set[str]] = {}
    for name, label, *values in rows:
        assert name in written
        assert label != "Infiltration", "NIH's box file spells it Infiltrate"
        label = {"Infiltrate": "Infiltration"}.get(label, label)
        assert label in findings[name], (name, label)
        x, y, w, h = (float(v) for v in values[:4])
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= size and y + h <= size
        boxed.setdefault(name, set()).add(label)
    for name, labels in findings.items():  # every bounded lesion has a box, the diffuse findings none
        assert boxed.get(name, set()) == labels & set(BOXED), name
    assert {label for labels in boxed.values() for label in labels} == set(BOXED)  # the seed draws every kind


def _twins(label: str, size: int = 128, seed: int = 11) -> tuple[np.ndarray, np.ndarray, list]:
    """The same radiograph (anatomy, noise, exposure) with and without one lesion; its boxes."""
    anatomy = synthetic._Anatomy(np.random.default_rng(seed))
    boxes: list = []
    with_lesion = synthetic.render({label}, anatomy, size, np.random.default_rng(seed + 1), boxes=boxes)
    rng = np.random.default_rng(seed + 1)
    if label == "Cardiomegaly":  # drawn by render itself: the same random numbers as its (empty) _draw branch
        rng.uniform(0.35, 1.0), rng.integers(0, 2)
        without = synthetic.render(set(), anatomy, size, rng)
    else:
        draw = synthetic._draw

        def skip(name, img, *args, **kwargs):  # draws (so takes the same random numbers), then drops the lesion
            drawn = draw(name, img, *args, **kwargs)
            return img if name == label else drawn

        synthetic._draw = skip
        try:
            without = synthetic.render({label}, anatomy, size, rng)
        finally:
            synthetic._draw = draw
    return with_lesion, without, [b[1:] for b in boxes if b[0] == label]


@pytest.mark.parametrize("label", BOXED)
def test_boxes_hold_the_drawn_lesion(label: str) -> None:
    """The written picture minus its lesion-free twin is the lesion (after blur, exposure and gamma): its change is
    inside the boxes, far above the outside, and each box edge touches it (boxes are not padded)."""
    with_lesion, without, boxes = _twins(label)
    change = np.abs(with_lesion - without)
    assert boxes and change.max() > 0.05
    inside = np.zeros(change.shape, dtype=bool)
    for x, y, w, h in boxes:
        x, y, w, h = int(x), int(y), int(w), int(h)
        inside[y : y + h, x : x + w] = True
        box = change[y : y + h, x : x + w]
        edges = [box[:, 0], box[:, -1]] + ([box[0], box[-1]] if label != "Cardiomegaly" else [])  # the heart's
        assert all(e.max() >= 0.1 * box.max() for e in edges), (label, "box larger than its lesion")  # tips stay
    assert change[inside].sum() / change.sum() >= 0.8, label
    assert change[inside].mean() >= 8 * change[~inside].mean(), label
