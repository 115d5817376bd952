"""BraTS editions and the transforms that depend on them.

The editions disagree on file suffixes and label values (REFERENCE.md section 1), so every datalist item
carries an ``edition`` string and the label <-> region conversions below read it, instead of assuming the
2018-2021 values like MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` (which yields an empty ET
channel on 2023 labels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

REGIONS = ("TC", "WT", "ET")
"""Output channels of the network: tumour core, whole tumour, enhancing tumour (the model-zoo order)."""


class BratsInputError(ValueError):
    """A BraTS file or folder that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Convention:
    """File suffixes (in the network's channel order T1c, T1, T2, FLAIR) and label values of an edition family."""

    name: str
    suffixes: tuple[str, str, str, str]
    necrosis: int  # NCR / NETC
    edema: int  # ED / SNFH
    enhancing: int  # ET

    @property
    def labels(self) -> tuple[int, ...]:
        return (0, self.necrosis, self.edema, self.enhancing)

    def regions(self, seg: np.ndarray) -> np.ndarray:
        """[TC, WT, ET] masks from a label map."""
        tc = (seg == self.necrosis) | (seg == self.enhancing)
        wt = tc | (seg == self.edema)
        et = seg == self.enhancing
        return np.stack([tc, wt, et])

    def labels_from_regions(self, regions: np.ndarray) -> np.ndarray:
        """Label map from [TC, WT, ET] masks, nested as in the model zoo: ET, else TC -> necrosis, else WT -> edema."""
        tc, wt, et = (np.asarray(r) > 0.5 for r in regions[:3])
        out = np.zeros(tc.shape, np.uint8)
        out[wt] = self.edema
        out[tc] = self.necrosis
        out[et] = self.enhancing
        return out


LEGACY = Convention("2018-2021", ("t1ce", "t1", "t2", "flair"), necrosis=1, edema=2, enhancing=4)
GLI2023 = Convention("2023", ("t1c", "t1n", "t2w", "t2f"), necrosis=1, edema=2, enhancing=3)
CONVENTIONS = {"2018-2021": LEGACY, "2023": GLI2023}


def convention(edition: str) -> Convention:
    """The convention of an edition string as written in datalists ("2018-2019", "2020", "2021", "2023", ...)."""
    if edition in CONVENTIONS:
        return CONVENTIONS[edition]
    if edition in ("2018", "2019", "2018-2019", "2020", "2021"):
        return LEGACY
    if edition.startswith("20") and edition[:4].isdigit() and int(edition[:4]) >= 2023:
        return GLI2023
    raise BratsInputError(f"unknown BraTS edition {edition!r}; expected one of 2018-2021 or 2023")


def _name(value: Any) -> str:
    return str(value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value)


def check_headers(
    files: Sequence[str | Path],
    atol: float = 1e-3,
    reference: tuple[tuple[int, ...], np.ndarray, str] | None = None,
) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine shared by all ``files`` (headers only, cheap); errors name the offending file.

    ``reference``: (shape, affine, name) the files must match, e.g. a 4-channel image's spatial geometry.
    """
    shape, affine, first = reference if reference is not None else (None, None, Path(files[0]).name)
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise BratsInputError(f"{f}: file not found")
        try:
            img = nib.load(str(f))
        except Exception as e:
            raise BratsInputError(f"{f}: not a readable NIfTI file ({e})") from e
        if len(img.shape) != 3:
            raise BratsInputError(
                f"{f}: expected a 3D volume, found shape {img.shape}"
                + (
                    " (4D NIfTI: the Medical Segmentation Decathlon layout is not supported)"
                    if len(img.shape) == 4
                    else ""
                )
            )
        if shape is None:
            shape, affine = tuple(img.shape), img.affine
        elif tuple(img.shape) != shape:
            raise BratsInputError(f"{f}: shape {tuple(img.shape)} differs from {first} {shape}")
        elif not np.allclose(img.affine, affine, atol=atol):
            raise BratsInputError(f"{f}: affine differs from {first}:\n{img.affine}\nvs\n{affine}")
    assert shape is not None and affine is not None
    return shape, affine


DECATHLON_NAME = re.compile(r"^BRATS_\d{3}\.nii(\.gz)?$")
"""Medical Segmentation Decathlon Task01 image names: 4D, but in the order FLAIR, T1w, T1gd, T2w with other labels."""


def check_stacked(file: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial shape and affine of a single-file case: a 4D NIfTI (x, y, z, 4) in the order T1c, T1, T2, FLAIR.

    This is how one study holds the 4 modalities where a tool stores one image per case (MONAI Label's
    datastore). Decathlon files are refused by name: same shape, different channel order and labels.
    """
    f = Path(file)
    if not f.is_file():
        raise BratsInputError(f"{f}: file not found")
    if DECATHLON_NAME.match(f.name):
        raise BratsInputError(
            f"{f}: a Medical Segmentation Decathlon Task01 image (channels FLAIR, T1w, T1gd, T2w and labels "
            "1 edema / 2 non-enhancing / 3 enhancing) is not supported; use the BraTS 2018-2021 or 2023 files"
        )
    try:
        img = nib.load(str(f))
    except Exception as e:
        raise BratsInputError(f"{f}: not a readable NIfTI file ({e})") from e
    if len(img.shape) != 4 or img.shape[3] != 4:
        raise BratsInputError(
            f"{f}: a single image file must hold the 4 modalities as a 4D NIfTI (x, y, z, 4) in the order "
            f"T1c, T1, T2, FLAIR; found shape {img.shape}. Otherwise give the 4 modality files."
        )
    return tuple(img.shape[:3]), img.affine


def image_files(value: Any) -> list[str]:
    """The image entry of an item: 4 modality paths, or 1 path to a 4-channel file (a bare string included)."""
    files = [str(value)] if isinstance(value, (str, Path)) else [str(f) for f in value]
    if len(files) not in (1, 4):
        raise BratsInputError(
            f"expected 4 modality files (T1c, T1, T2, FLAIR) or one 4-channel NIfTI, got {len(files)}: {files}"
        )
    return files


class LoadBratsCased(MapTransform):
    """Load the 4 modalities (stacked, channel-first) and the optional seg, refusing bad files by name.

    The image is either the 4 modality files of a BraTS case folder or one 4D NIfTI holding them in the
    network's order (T1c, T1, T2, FLAIR), which is what MONAI Label passes. Checks before anything reaches
    the network: all files exist, are readable (a truncated ``.nii.gz`` fails while decompressing), share
    shape and affine, image voxels are finite. The label is loaded as a (1, H, W, D) MetaTensor.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)

    def _load(self, f: str) -> MetaTensor:
        try:
            return self.loader(f)
        except Exception as e:
            raise BratsInputError(f"{f}: cannot read the NIfTI data ({type(e).__name__}: {e})") from e

    @staticmethod
    def _check_finite(img: torch.Tensor, f: str) -> None:
        if not torch.isfinite(img).all():
            bad = int((~torch.isfinite(img)).sum())
            raise BratsInputError(f"{f}: {bad} voxels are NaN or Inf")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        files = image_files(d[self.image_key])
        others = [str(d[k]) for k in self.key_iterator(d) if k != self.image_key]
        if len(files) == 1:
            shape, affine = check_stacked(files[0])
            if others:
                check_headers(others, reference=(shape, affine, Path(files[0]).name))
            image = self._load(files[0])
            if tuple(image.shape) != (4, *shape):
                raise BratsInputError(f"{files[0]}: loaded as {tuple(image.shape)}, expected (4, {shape})")
            self._check_finite(image, files[0])
        else:
            check_headers(files + others)
            channels = []
            for f in files:
                img = self._load(f)
                self._check_finite(img, f)
                channels.append(img)
            image = torch.cat(channels, dim=0)
        image.meta["filename_or_obj"] = files[0]
        d[self.image_key] = image
        for key in self.key_iterator(d):
            if key != self.image_key:
                d[key] = self._load(str(d[key]))
        return d


class _EditionTransform(MapTransform):
    """A transform whose label values depend on the item's ``edition`` (``default_edition`` when it has none)."""

    def __init__(
        self,
        keys: KeysCollection,
        edition_key: str = "edition",
        default_edition: str = "2021",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.edition_key = edition_key
        self.default_edition = default_edition

    def convention_of(self, d: Mapping[Hashable, Any]) -> Convention:
        return convention(_name(d.get(self.edition_key) or self.default_edition))  # MONAI Label items have none


class LabelsToRegionsd(_EditionTransform):
    """BraTS label map -> [TC, WT, ET] masks, with the label values of the item's ``edition``.

    Label values outside the edition's set are refused (naming the file): a 2023 seg read as 2018-2021
    has no 4 and a 3 that would otherwise be dropped silently.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        conv = self.convention_of(d)
        for key in self.key_iterator(d):
            seg = d[key]
            arr = np.asarray(seg.detach().cpu() if isinstance(seg, torch.Tensor) else seg)
            arr = arr[0] if arr.ndim == 4 else arr
            values = np.unique(arr)
            unexpected = [v for v in values.tolist() if v not in conv.labels or not math.isfinite(v)]
            unexpected = [int(v) if math.isfinite(v) and v == int(v) else v for v in unexpected]
            if unexpected:
                name = seg.meta.get("filename_or_obj", key) if isinstance(seg, MetaTensor) else key
                raise BratsInputError(
                    f"{name}: unexpected label values {unexpected} for BraTS {conv.name} (allowed {list(conv.labels)})"
                )
            regions = torch.as_tensor(conv.regions(np.rint(arr).astype(np.int16)), dtype=torch.float32)
            d[key] = MetaTensor(regions, meta=seg.meta) if isinstance(seg, MetaTensor) else regions
        return d


class RegionsToLabelsd(_EditionTransform):
    """[TC, WT, ET] masks -> a (1, H, W, D) uint8 label map with the values of the item's edition.

    The last inference step before writing, so what leaves the bundle (a file, or MONAI Label's response)
    is a BraTS label map: 2018-2021 items get 1/2/4, 2023 items 1/2/3, items without an edition (MONAI
    Label, single files) get ``default_edition``'s.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        conv = self.convention_of(d)
        for key in self.key_iterator(d):
            regions = d[key]
            arr = regions.detach().cpu().numpy() if isinstance(regions, torch.Tensor) else np.asarray(regions)
            labels = torch.as_tensor(conv.labels_from_regions(arr)[None])
            d[key] = MetaTensor(labels, meta=regions.meta) if isinstance(regions, MetaTensor) else labels
        return d


class NestRegionsd(MapTransform):
    """Thresholded [TC, WT, ET] channels -> the regions of the label map inference writes: TC includes ET, WT
    includes TC (``RegionsToLabelsd`` nests them the same way: ET, else TC -> necrosis, else WT -> edema).

    A network's channels need not nest (an ET voxel outside TC); the challenge scores the submitted label map, so
    validation and evaluation score these nested regions: the reported Dice is the Dice of the written file.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            tc, wt, et = (regions[i] > 0.5 for i in range(3))
            tc = tc | et
            nested = torch.stack([tc, wt | tc, et]).to(regions.dtype)
            d[key] = MetaTensor(nested, meta=regions.meta) if isinstance(regions, MetaTensor) else nested
        return d
