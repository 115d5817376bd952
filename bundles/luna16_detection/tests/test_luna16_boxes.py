"""World (ITK/LPS mm) <-> voxel boxes on oblique, anisotropic synthetic scans loaded the way the bundle loads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.dictionary import AffineBoxToImageCoordinated
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from scripts.boxes import WorldBoxesToVoxeld, voxel_to_world_boxes, world_to_voxel_boxes
from scripts.prepare import fold_datalist, read_mhd_header, world_to_index
from scripts.synthetic import generate


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = generate(tmp_path_factory.mktemp("luna"), n_scans=10, size=(64, 64, 24), empty_fraction=0.0, seed=5)
    dl = fold_datalist(root, fold=0)
    return dl["training"] + dl["validation"] + dl["test"]


def _load(resample: bool) -> Compose:
    t = [
        LoadImaged("image", reader="ITKReader", affine_lps_to_ras=True, image_only=True),
        EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="RAS", labels=None),
    ]
    if resample:
        t.append(Spacingd("image", pixdim=[0.703125, 0.703125, 1.25]))
    return Compose(t)


def _oblique(affine: torch.Tensor) -> bool:
    a = affine[:3, :3].numpy()
    return bool(np.abs(a - np.diag(np.diag(a))).max() > 1e-3)


def test_synthetic_headers_read_back_by_itk(items: list[dict]) -> None:
    import itk

    for item in items[:3]:
        image = itk.imread(item["image"])
        header = read_mhd_header(item["image"])
        np.testing.assert_allclose(np.asarray(image.GetDirection()), header["direction"], atol=1e-9)
        np.testing.assert_allclose(np.asarray(image.GetOrigin()), header["origin"], atol=1e-6)
        for x, y, z, _ in item["nodules"]:  # ITK's own world -> index agrees with the prepare step
            idx = image.TransformPhysicalPointToContinuousIndex([x, y, z])
            np.testing.assert_allclose(np.asarray(idx), world_to_index(header, np.array([x, y, z])), atol=1e-6)


@pytest.mark.parametrize("resample", [False, True])
def test_world_voxel_world_round_trip_under_half_mm(items: list[dict], resample: bool) -> None:
    load = _load(resample)
    n_oblique = 0
    for item in items:
        d = load(dict(item))
        affine = d["image"].affine
        n_oblique += _oblique(affine)
        spacing = np.linalg.norm(affine[:3, :3].numpy(), axis=0)
        assert spacing[2] > spacing[0] * 1.05 or resample  # anisotropic slices in the raw scans
        boxes = np.array(item["box"], dtype=float).reshape(-1, 6)
        back = np.asarray(voxel_to_world_boxes(world_to_voxel_boxes(boxes, affine), affine))
        assert np.abs(back - boxes).max() < 0.5
        assert np.abs(back - boxes).max() < 1e-3  # in fact exact up to float32
    assert n_oblique > 0, "the generator should produce oblique scans"


def test_annotation_lands_on_generated_nodule(items: list[dict]) -> None:
    """HU at the annotated centre (after LPS -> RAS and the inverse affine) is nodule, not lung (-850 HU)."""
    load = Compose([_load(True), WorldBoxesToVoxeld("box", "image")])
    checked = 0
    for item in items:
        d = load(dict(item))
        img = d["image"][0].numpy()
        for box, nodule in zip(np.asarray(d["box"]), item["nodules"]):
            centre = np.round((box[:3] + box[3:]) / 2).astype(int)
            assert np.all(centre >= 0) and np.all(centre < img.shape)
            # ground-glass nodules reach only -650..-350 HU; lung is about -850 (tiny ones blur into it)
            if nodule[3] >= 5:
                assert img[tuple(centre)] > -720, f"{item['seriesuid']}: no nodule at the annotated centre"
                checked += 1
            # the LPS/RAS mix-up puts the box at the point mirrored through the RAS origin: off the image or elsewhere
            wrong = np.asarray(
                world_to_voxel_boxes(np.r_[np.array(nodule[:3]) * [-1, -1, 1], nodule[3:] * 3][None], d["image"].affine)
            )[0]
            assert np.linalg.norm((wrong[:3] + wrong[3:]) / 2 - (box[:3] + box[3:]) / 2) > nodule[3]
    assert checked > 5


def test_matches_monai_affine_box_transform_on_axis_aligned_scans(items: list[dict]) -> None:
    load = _load(False)
    monai_t = AffineBoxToImageCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True)
    compared = 0
    for item in items:
        d = load(dict(item))
        if not item["box"]:
            continue
        ours = np.asarray(world_to_voxel_boxes(np.array(item["box"]), d["image"].affine))
        cccwhd = torch.tensor(item["box"], dtype=torch.float64)
        xyzxyz = torch.cat([cccwhd[:, :3] - cccwhd[:, 3:] / 2, cccwhd[:, :3] + cccwhd[:, 3:] / 2], 1)
        theirs = monai_t({"image": d["image"], "box": xyzxyz})["box"].numpy()
        centres = (ours[:, :3] + ours[:, 3:]) / 2, (theirs[:, :3] + theirs[:, 3:]) / 2
        np.testing.assert_allclose(*centres, atol=1e-3)  # centres agree on every scan
        if not _oblique(d["image"].affine):
            np.testing.assert_allclose(ours, theirs, atol=1e-3)  # sizes too when the grid is axis-aligned
            compared += 1
    assert compared > 0
