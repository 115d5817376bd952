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


# ------------------------------------------------------------------------------------- localisation scores, baselines


def test_read_boxes_takes_the_nih_file_as_released(tmp_path: Path) -> None:
    from scripts.localisation import Box, BoxFileError, read_boxes

    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661\n"
        "00014716_007.png,Infiltrate,10,20,30,40,,,\n"
    )
    assert read_boxes(path) == [
        Box("00013118_008.png", "Atelectasis", 225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661),
        Box("00014716_007.png", "Infiltration", 10.0, 20.0, 30.0, 40.0),
    ]
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Pneumonitis,1,2,3,4,,,\n")
    with pytest.raises(BoxFileError, match=r":2: unknown finding label 'Pneumonitis'"):
        read_boxes(path)
    path.write_text("image,label,x,y,w,h\na.png,Mass,1,2,3,4\n")
    with pytest.raises(BoxFileError, match="NIH header"):
        read_boxes(path)


def test_box_mask_maps_file_pixels_to_the_network_grid() -> None:
    from scripts.localisation import box_mask

    # an 8 x 16 (rows x cols) file on a 4 x 4 grid: a grid pixel is 2 file rows by 4 file columns
    mask = box_mask([(8.0, 0.0, 8.0, 4.0)], source_shape=(8, 16), grid_shape=(4, 4))  # right half, top half
    expected = np.zeros((4, 4), dtype=bool)
    expected[0:2, 2:4] = True
    np.testing.assert_array_equal(mask, expected)
    # centres of grid columns are at file x = 2, 6, 10, 14: the box [5, 7) holds only column 1
    np.testing.assert_array_equal(box_mask([(5.0, 0.0, 2.0, 8.0)], (8, 16), (4, 4))[0], [False, True, False, False])
    # smaller than a grid pixel and between centres: the grid pixel holding its centre
    tiny = box_mask([(12.5, 5.0, 0.5, 0.5)], (8, 16), (4, 4))
    assert tiny.sum() == 1 and tiny[2, 3]
    union = box_mask([(0.0, 0.0, 4.0, 2.0), (12.0, 6.0, 4.0, 2.0)], (8, 16), (4, 4))
    assert union.sum() == 2 and union[0, 0] and union[3, 3]


def test_pointing_game_and_energy_against_hand_computed_values() -> None:
    from scripts.localisation import energy_in_box, pointing_game

    mask = np.zeros((3, 4), dtype=bool)
    mask[0:2, 2:4] = True  # 4 of 12 pixels, top right
    heat = np.array([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    assert pointing_game(heat, mask) == 1.0  # the 5 is inside
    assert energy_in_box(heat, mask) == pytest.approx((2 + 5 + 1) / 12)
    heat[2, 0] = 9.0
    assert pointing_game(heat, mask) == 0.0
    assert energy_in_box(heat, mask) == pytest.approx(8 / 18)
    tied = np.array([[0.0, 7.0, 7.0, 0.0], [0.0, 0.0, 0.0, 0.0], [7.0, 0.0, 0.0, 7.0]])
    assert pointing_game(tied, mask) == 0.25  # 1 of 4 tied maxima inside
    flat = np.zeros((3, 4))
    assert pointing_game(flat, mask) == pytest.approx(4 / 12) and energy_in_box(flat, mask) == pytest.approx(4 / 12)
    with pytest.raises(ValueError, match="non-negative"):
        energy_in_box(-heat, mask)


def test_random_baseline_is_the_box_area_fraction() -> None:
    """Exact expectation of i.i.d. random maps, checked against 20000 sampled maps."""
    from scripts.localisation import energy_in_box, pointing_game, random_map_expectation

    mask = np.zeros((6, 10), dtype=bool)
    mask[1:3, 6:9] = True  # 6 of 60 pixels
    assert random_map_expectation(mask) == {"pointing_game": 0.1, "energy_in_box": 0.1}
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(20000, 6, 10))
    hits = np.array([pointing_game(m, mask) for m in maps])
    energy = np.array([energy_in_box(m, mask) for m in maps])
    assert abs(hits.mean() - 0.1) < 3 * np.sqrt(0.1 * 0.9 / len(maps))
    assert abs(energy.mean() - 0.1) < 3 * energy.std() / np.sqrt(len(maps))


def test_centre_gaussian_peaks_at_the_centre() -> None:
    from scripts.localisation import centre_gaussian

    bump = centre_gaussian((6, 8))
    assert np.unravel_index(np.argmax(bump), bump.shape) in {(2, 3), (2, 4), (3, 3), (3, 4)}
    np.testing.assert_allclose(bump, bump[::-1, ::-1])
    assert bump[0, 0] == pytest.approx(np.exp(-((2.5 / 6) ** 2 + (3.5 / 8) ** 2) / (2 * 0.25**2)))
