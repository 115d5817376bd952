"""Nodule boxes between LUNA16 world millimetres (ITK/LPS) and voxel indices of the loaded image (RAS affine).

Conventions (stated once, used everywhere in the bundle):
- datalists, annotations, outputs: world mm in ITK/LPS physical space (as ``annotations.csv``), box mode
  ``cccwhd`` = centre x, y, z then sizes along x, y, z in mm.
- inside the network: continuous voxel indices of the (re-oriented, resampled) image, box mode ``xyzxyz``
  (MONAI's standard mode); index ``i`` is the centre of voxel ``i`` (the affine maps indices to voxel centres).
- MONAI's ``LoadImage`` with ``ITKReader`` returns a RAS affine (``affine_lps_to_ras=True``), so a world LPS
  point is flipped to RAS (x, y negated) before the inverse affine is applied.

Why not MONAI's ``AffineBoxToImageCoordinated`` alone: it maps the 8 box corners and takes their bounding box,
so on an oblique scan every world -> voxel -> world trip inflates the box (a 10 mm box grows by ~1.5 mm at
5 degrees). Nodules are spheres, so here centres go through the affine exactly and sizes are scaled by the
voxel spacing along each axis: the round trip is exact. On axis-aligned scans both give the same boxes
(tested).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def _as_numpy_affine(affine: torch.Tensor | np.ndarray) -> np.ndarray:
    a = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {a.shape}")
    return a.astype(np.float64)


def _like(values: np.ndarray, reference: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    if isinstance(reference, torch.Tensor):
        return torch.as_tensor(values, dtype=reference.dtype if reference.is_floating_point() else torch.float32)
    return values.astype(np.float32)


def world_to_voxel_boxes(
    boxes_world: torch.Tensor | np.ndarray, affine_ras: torch.Tensor | np.ndarray
) -> torch.Tensor | np.ndarray:
    """(N, 6) world LPS ``cccwhd`` mm -> (N, 6) voxel ``xyzxyz`` for an image with RAS ``affine_ras``."""
    b = np.asarray(boxes_world.detach().cpu() if isinstance(boxes_world, torch.Tensor) else boxes_world, float)
    b = b.reshape(-1, 6)
    a = _as_numpy_affine(affine_ras)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    centre_ras = b[:, :3] * LPS_TO_RAS
    centre_vox = (np.linalg.inv(a) @ np.c_[centre_ras, np.ones(len(b))].T).T[:, :3]
    half = b[:, 3:] / spacing / 2
    return _like(np.c_[centre_vox - half, centre_vox + half], boxes_world)


def voxel_to_world_boxes(
    boxes_voxel: torch.Tensor | np.ndarray, affine_ras: torch.Tensor | np.ndarray
) -> torch.Tensor | np.ndarray:
    """(N, 6) voxel ``xyzxyz`` -> (N, 6) world LPS ``cccwhd`` mm; exact inverse of ``world_to_voxel_boxes``."""
    b = np.asarray(boxes_voxel.detach().cpu() if isinstance(boxes_voxel, torch.Tensor) else boxes_voxel, float)
    b = b.reshape(-1, 6)
    a = _as_numpy_affine(affine_ras)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    centre_vox = (b[:, :3] + b[:, 3:]) / 2
    centre_ras = (a @ np.c_[centre_vox, np.ones(len(b))].T).T[:, :3]
    size = (b[:, 3:] - b[:, :3]) * spacing
    return _like(np.c_[centre_ras * LPS_TO_RAS, size], boxes_voxel)


class WorldBoxesToVoxeld(MapTransform):
    """Dictionary transform: world LPS ``cccwhd`` boxes -> voxel ``xyzxyz`` of ``image_key`` (its current affine).

    Apply after every spatial transform of the image that changes its grid (orientation, spacing), and before
    the box-aware random transforms.
    """

    def __init__(self, box_keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(box_keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        affine = d[self.image_key].affine
        for key in self.key_iterator(d):
            d[key] = world_to_voxel_boxes(d[key], affine)
        return d


class VoxelBoxesToWorldd(WorldBoxesToVoxeld):
    """Dictionary transform: voxel ``xyzxyz`` boxes of ``image_key`` -> world LPS ``cccwhd`` mm."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        affine = d[self.image_key].affine
        for key in self.key_iterator(d):
            d[key] = voxel_to_world_boxes(d[key], affine)
        return d
