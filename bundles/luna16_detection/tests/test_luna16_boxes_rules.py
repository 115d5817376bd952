"""World (LPS mm, ``cccwhd``) <-> voxel (``xyzxyz``) boxes: a hand-computed case, the containers and dtypes the
transforms hand back (what MONAI's box transforms downstream receive), and the dictionary transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.boxes import VoxelBoxesToWorldd, WorldBoxesToVoxeld, voxel_to_world_boxes, world_to_voxel_boxes

# RAS affine of an axis-aligned scan: 0.7 mm in-plane with both in-plane axes flipped, 2.5 mm slices
AFFINE = np.array([[-0.7, 0, 0, 100.0], [0, -0.7, 0, 50.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
WORLD = np.array([[10.0, 20.0, 5.0, 7.0, 14.0, 5.0]])  # LPS centre (10, 20, 5) mm, size 7 x 14 x 5 mm
# LPS -> RAS: (-10, -20, 5); voxel = (RAS - origin) / spacing: ((-10 - 100) / -0.7, (-20 - 50) / -0.7, (5 + 30) / 2.5)
#   = (157.142857, 100, 14); half sizes in voxels: 7 / 0.7 / 2 = 5, 14 / 0.7 / 2 = 10, 5 / 2.5 / 2 = 1
VOXEL = np.array([[110 / 0.7 - 5, 90.0, 13.0, 110 / 0.7 + 5, 110.0, 15.0]])


def oblique_affine() -> np.ndarray:
    a = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.7, 0.8, 2.5])
    a[:3, 3] = [-120.5, 33.3, -200.25]
    return a


def test_hand_computed_box_both_ways() -> None:
    np.testing.assert_allclose(world_to_voxel_boxes(WORLD, AFFINE), VOXEL, rtol=1e-6)
    np.testing.assert_allclose(voxel_to_world_boxes(VOXEL, AFFINE), WORLD, rtol=1e-6)


@pytest.mark.parametrize("convert", [world_to_voxel_boxes, voxel_to_world_boxes])
def test_containers_and_dtypes_follow_the_input(convert) -> None:
    boxes = VOXEL if convert is voxel_to_world_boxes else WORLD
    out = convert(boxes, AFFINE)  # numpy in, float32 numpy out
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    for dtype in (torch.float32, torch.float64):
        out = convert(torch.as_tensor(boxes, dtype=dtype), torch.as_tensor(AFFINE))
        assert isinstance(out, torch.Tensor) and out.dtype == dtype
    out = convert(torch.as_tensor(np.round(boxes), dtype=torch.int64), AFFINE)  # integer boxes -> float32 tensor
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), convert(np.round(boxes), AFFINE), rtol=1e-6)


@pytest.mark.parametrize("convert", [world_to_voxel_boxes, voxel_to_world_boxes])
def test_tensors_that_require_grad_are_accepted(convert) -> None:
    affine = torch.as_tensor(AFFINE, dtype=torch.float64).requires_grad_()
    boxes = torch.as_tensor(VOXEL if convert is voxel_to_world_boxes else WORLD).requires_grad_()
    expected = VOXEL if convert is world_to_voxel_boxes else WORLD
    np.testing.assert_allclose(convert(boxes, affine).detach().numpy(), expected, rtol=1e-6)


def test_float32_boxes_are_converted_in_float64() -> None:
    """A float32 input gives the float64 result rounded once to float32 (no float32 intermediate rounding)."""
    rng = np.random.default_rng(0)
    start = rng.uniform(0, 300, (500, 3))
    boxes = torch.tensor(np.c_[start, start + rng.uniform(1, 30, (500, 3))], dtype=torch.float32)
    affine = torch.as_tensor(oblique_affine())
    for convert in (voxel_to_world_boxes, world_to_voxel_boxes):
        exact = convert(boxes.double(), affine).float()
        assert torch.equal(convert(boxes, affine), exact)


def test_affine_must_be_4x4() -> None:
    with pytest.raises(ValueError, match=r"^expected a 4x4 affine, got shape \(3, 3\)$"):
        world_to_voxel_boxes(WORLD, AFFINE[:3, :3])


def test_dictionary_transforms_round_trip_with_the_image_affine() -> None:
    image = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.as_tensor(oblique_affine()))
    boxes = torch.tensor([[-100.0, 20.0, -190.0, 6.0, 6.0, 5.0], [-90.0, 10.0, -180.0, 10.0, 8.0, 7.5]])
    voxel = WorldBoxesToVoxeld("box")({"image": image, "box": boxes, "other": 1})  # image_key defaults to "image"
    np.testing.assert_allclose(voxel["box"], world_to_voxel_boxes(boxes, image.affine))
    assert voxel["other"] == 1
    world = VoxelBoxesToWorldd("box")(voxel)
    np.testing.assert_allclose(world["box"], boxes, atol=1e-4)
    other_key = VoxelBoxesToWorldd("box", image_key="ct")({"ct": image, "box": voxel["box"]})
    np.testing.assert_allclose(other_key["box"], boxes, atol=1e-4)


@pytest.mark.parametrize("transform", [WorldBoxesToVoxeld, VoxelBoxesToWorldd])
def test_missing_box_key_is_an_error_unless_allowed(transform) -> None:
    data = {"image": MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.as_tensor(AFFINE))}
    with pytest.raises(KeyError):
        transform("box")(data)
    assert transform("box", allow_missing_keys=True)(data).keys() == {"image"}
