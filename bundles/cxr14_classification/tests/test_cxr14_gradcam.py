"""Grad-CAM and its localisation score: the generator's box file (NIH header, boxes around the drawn lesions), the
scores against hand-computed values, the random baseline, and Grad-CAM's orientation and sign on hand-built networks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import scripts.synthetic as synthetic
from scripts.labels import LABELS, parse_findings
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


# ------------------------------------------------------------------------------- Grad-CAM: orientation, sign, layer


class RegionNet(torch.nn.Module):
    """Reads only ``rows x cols`` of a 32 x 32 input: masked input -> 3x3 conv (positive) -> 4x4 average pool ->
    ``act`` (ReLU, the Grad-CAM layer, 8 x 8) -> global mean -> head. Label 0 weighs the region's activity
    positively, label 1 negatively (evidence against)."""

    def __init__(self, rows: slice, cols: slice) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., rows, cols] = 1
        self.register_buffer("mask", mask)
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.pool = torch.nn.AvgPool2d(4)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.head.weight.copy_(torch.tensor([[1.0, 0.5, 0.2], [-1.0, -0.5, -0.2]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.pool(self.conv(x * self.mask))).mean(dim=(2, 3)))


@pytest.mark.parametrize(("rows", "cols"), [(slice(4, 12), slice(20, 28)), (slice(24, 32), slice(0, 8))])
def test_gradcam_peaks_in_the_only_region_the_network_reads(rows: slice, cols: slice) -> None:
    """Regions off the diagonal: a transposed or flipped map, or one turned upside down (MONAI's default
    normaliser), peaks elsewhere; evidence against a label (negative weight) shows no heat at all."""
    from scripts.outputs import GradCAMMaps

    image = torch.from_numpy(np.random.default_rng(0).uniform(0.5, 1.0, (1, 32, 32)).astype(np.float32))
    maps = GradCAMMaps(RegionNet(rows, cols), target_layer="act")(image, [0, 1])
    assert maps.shape == (2, 32, 32)
    heat, against = maps
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0
    peak_row, peak_col = np.unravel_index(np.argmax(heat), heat.shape)
    assert rows.start <= peak_row < rows.stop and cols.start <= peak_col < cols.stop
    region = np.zeros(heat.shape, dtype=bool)
    region[rows, cols] = True
    assert heat[region].sum() / heat.sum() >= 0.6  # the rest: bilinear upsampling of 4 px cells, the conv's edge
    near = np.zeros(heat.shape, dtype=bool)
    near[max(rows.start - 8, 0) : rows.stop + 8, max(cols.start - 8, 0) : cols.stop + 8] = True
    assert np.all(heat[~near] == 0)  # nothing two cells (8 px) or more away from the region
    assert np.all(against == 0)


def test_gradcam_of_the_bundle_network_is_its_cam() -> None:
    """At ``class_layers.relu`` (after the final norm and ReLU, before pooling) Grad-CAM is CAM: ReLU of the label's
    head weights times the feature maps, bilinearly upsampled, divided by its maximum."""
    import torch.nn.functional as F

    from scripts.networks import cxr_network
    from scripts.outputs import GradCAMMaps

    torch.manual_seed(0)
    net = cxr_network("small").eval()
    image = torch.randn(1, 96, 96)
    labels = [0, 7, 13]
    maps = GradCAMMaps(net)(image, labels)
    with torch.no_grad():
        features = torch.relu(net.features(image[None]))
        weights = net.class_layers.out.weight[labels]
        cam = torch.relu(torch.einsum("lc,bchw->blhw", weights, features))
        cam = F.interpolate(cam, size=(96, 96), mode="bilinear", align_corners=False)[0].numpy()
    for k in range(len(labels)):
        expected = cam[k] / cam[k].max() if cam[k].max() > 0 else cam[k]
        np.testing.assert_allclose(maps[k], expected, atol=1e-5)
    assert any(cam[k].max() > 0 for k in range(len(labels)))


def test_overlay_has_a_colour_bar_and_names_label_and_probability(monkeypatch) -> None:
    from types import SimpleNamespace

    import scripts.outputs as outputs

    torch.manual_seed(0)
    from scripts.networks import cxr_network

    net = cxr_network("small").eval()
    pred = torch.full((14,), 0.1)
    pred[13], pred[4] = 0.93, 0.41
    engine = SimpleNamespace(
        network=net,
        state=SimpleNamespace(
            output=[{"pred": pred, "image": torch.randn(1, 96, 96)}],
            batch={"image_path": ["/x/00000001_000.png"]},
            iteration=1,
        ),
    )
    drawn = {}
    monkeypatch.setattr(outputs, "atomic_write_bytes", lambda data, path: drawn.setdefault("path", path))
    real = outputs.overlay_png
    monkeypatch.setattr(outputs, "overlay_png", lambda grey, maps, titles: drawn.update(maps=maps, titles=titles))
    outputs.GradCAMOverlay("/out", LABELS, top_k=2)(engine)
    assert drawn["titles"] == ["Grad-CAM Hernia, p=0.93", "Grad-CAM Mass, p=0.41"]
    assert drawn["path"] == Path("/out/00000001_000.png_gradcam.png")
    fig = outputs.overlay_figure(np.full((96, 96), 0.5), drawn["maps"], drawn["titles"])
    panels, bars = fig.axes[:3], fig.axes[3:]
    assert len(bars) == 2  # one colour bar per map
    assert [p.get_title() for p in panels] == ["input", *drawn["titles"]]
    for panel, bar in zip(panels[1:], bars):
        assert panel.images[-1].get_clim() == (0, 1)  # fixed scale: 1 = the map's own maximum
        assert bar.get_ylim() == (0, 1) and "max" in bar.get_ylabel()
    assert real(np.full((96, 96), 0.5), drawn["maps"], drawn["titles"])[:4] == b"\x89PNG"
