"""The detection PNGs people read: boxes labelled with score, world-mm centre and diameter, ground truth in another
colour when known (datalist nodules, or ``annotations_csv`` at inference), slices through the box centres.

The geometry is hand-computed: image affine RAS diag(0.5, 0.5, 2) mm with origin (-100, -50, 30) mm, so voxel
(i, j, k) is at RAS (-100 + i/2, -50 + j/2, 30 + 2k) and at LPS (100 - i/2, 50 - j/2, 30 + 2k).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from scripts.boxes import VoxelBoxesToWorldd
from scripts.handlers import DetectionWriter, box_label, detection_panels

BUNDLE = Path(__file__).resolve().parents[1]
SHAPE = (200, 160, 40)  # x, y, z voxels, RAS
UID = "1.2.3.4"


def _affine() -> np.ndarray:
    a = np.diag([0.5, 0.5, 2.0, 1.0])
    a[:3, 3] = (-100.0, -50.0, 30.0)
    return a


def _image(seed: int = 0) -> MetaTensor:
    """Mid-grey noise (0.3-0.6), so no pixel of the scan itself is red or cyan."""
    values = np.random.default_rng(seed).uniform(0.3, 0.6, (1, *SHAPE)).astype(np.float32)
    return MetaTensor(torch.as_tensor(values), affine=torch.as_tensor(_affine()))


def _prediction() -> dict:
    """A 10x10x4-voxel box centred on voxel (20, 40, 5) through the bundle's own voxel -> world step."""
    image = _image()
    voxel = torch.tensor([[15.0, 35.0, 3.0, 25.0, 45.0, 7.0]])
    world = VoxelBoxesToWorldd("box", "image")({"box": voxel, "image": image})["box"]
    return {"seriesuid": UID, "image": image, "pred_box": world, "pred_box_voxel": voxel,
            "pred_score": torch.tensor([0.93])}  # fmt: skip


def test_box_label_gives_world_mm_centre_and_diameter() -> None:
    o = _prediction()
    # voxel (20, 40, 5) -> RAS (-90, -30, 40) -> LPS (90, 30, 40); sides 10, 10, 4 voxels = 5, 5, 8 mm
    np.testing.assert_allclose(o["pred_box"].numpy(), [[90.0, 30.0, 40.0, 5.0, 5.0, 8.0]], atol=1e-5)
    panels = detection_panels(o["image"][0].numpy(), _affine(), o["pred_box"], o["pred_score"])
    assert len(panels) == 1
    p = panels[0]
    assert p.z == 5 and p.n_slices == 40 and p.z_mm == pytest.approx(40.0)
    assert [m.label for m in p.marks] == ["P1 score 0.93, centre (90.0, 30.0, 40.0) mm, diam. 6.0 mm"]
    # radiological display: column = 199 - x (the patient's right on the left), row = 159 - y (anterior up)
    assert p.image.shape == (160, 200)
    np.testing.assert_allclose(p.marks[0].rect, (174.0, 114.0, 184.0, 124.0), atol=1e-4)
    assert box_label("G1", [-12.34, 5.0, -300.06, 8.0, 8.0, 8.0]) == "G1 centre (-12.3, 5.0, -300.1) mm, diam. 8.0 mm"


def test_panels_follow_the_affine_not_the_voxel_order() -> None:
    o = _prediction()
    ras = detection_panels(o["image"][0].numpy(), _affine(), o["pred_box"], o["pred_score"])[0]
    flip = np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    lps = detection_panels(o["image"][0].numpy()[::-1, ::-1], _affine() @ flip, o["pred_box"], o["pred_score"])[0]
    np.testing.assert_array_equal(ras.image, lps.image)
    np.testing.assert_allclose(ras.marks[0].rect, lps.marks[0].rect, atol=1e-4)


def _cyan(png: Path) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((rgb[..., 0] < 80) & (rgb[..., 1] > 200) & (rgb[..., 2] > 200)).sum())


def _red(png: Path) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)).sum())


def _write(out: Path, annotations_csv: str | None = None, **output) -> Path:
    writer = DetectionWriter(str(out), save_png=True, png_min_score=0.5, annotations_csv=annotations_csv)
    writer.iteration_completed(SimpleNamespace(state=SimpleNamespace(output=[{**_prediction(), **output}])))
    return out / f"{UID}.png"


@pytest.mark.parametrize("source", ["annotations_csv", "datalist"])
def test_ground_truth_is_drawn_when_known(source: str, tmp_path: Path) -> None:
    hit, missed = [89.0, 31.0, 40.0, 7.0], [80.0, 20.0, 60.0, 6.0]  # the missed one is on slice (60 - 30) / 2 = 15
    csv = tmp_path / "annotations.csv"
    csv.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n" + "".join(
        f"{UID},{x},{y},{z},{d}\n" for x, y, z, d in (hit, missed)) + "9.9.9,1,2,3,4\n")  # fmt: skip
    if source == "annotations_csv":
        png = _write(tmp_path / "with", str(csv), nodules=[])  # inference items carry no nodules
    else:
        png = _write(tmp_path / "with", nodules=[hit, missed])  # evaluation items carry theirs
    without = _write(tmp_path / "without", nodules=[])
    other = tmp_path / "other.csv"  # annotations known, none for this scan: only the legend's dashed cyan line
    other.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n9.9.9,1,2,3,4\n")
    legend_only = _write(tmp_path / "legend_only", str(other), nodules=[])
    assert _red(png) > 0 and _red(without) > 0
    assert _cyan(without) == 0 and 0 < _cyan(legend_only) < 100
    assert _cyan(png) > _cyan(legend_only) + 100, "ground-truth boxes (cyan) expected"
    record = json.loads((tmp_path / "with" / f"{UID}.json").read_text())  # the JSON output is unchanged
    assert record["scores"] == [0.93] and len(record["boxes"]) == 1

    o = _prediction()
    panels = detection_panels(o["image"][0].numpy(), _affine(), o["pred_box"], o["pred_score"], [hit, missed])
    assert [p.z for p in panels] == [5, 15]  # the prediction's centre slice (the hit is on it), the missed nodule's
    assert [m.tag for m in panels[0].marks] == ["P1", "G1"] and [m.tag for m in panels[1].marks] == ["G2"]
    assert panels[1].marks[0].label == "G2 centre (80.0, 20.0, 60.0) mm, diam. 6.0 mm"
    assert panels[1].marks[0].kind == "ground truth"


def test_missed_nodule_alone_still_gets_a_picture(tmp_path: Path) -> None:
    missed = [80.0, 20.0, 60.0, 6.0]
    png = _write(tmp_path, nodules=[missed], pred_score=torch.tensor([0.1]))  # below png_min_score
    assert png.is_file() and _cyan(png) > 100
    o = _prediction()
    panels = detection_panels(o["image"][0].numpy(), _affine(), o["pred_box"], [0.1], [missed])
    assert [(p.z, [m.tag for m in p.marks]) for p in panels] == [(15, ["G1"])]
    assert not _write(tmp_path / "nothing", pred_score=torch.tensor([0.1]), nodules=[]).exists()


def test_inference_config_passes_annotations_csv(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    assert parser["annotations_csv"] is None
    writer = next(h for h in parser["handlers"] if h["_target_"].endswith("DetectionWriter"))
    assert writer["annotations_csv"] == "@annotations_csv"
