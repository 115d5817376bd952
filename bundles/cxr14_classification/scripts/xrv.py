"""torchxrayvision's DenseNet-121 pipeline, for checkpoints imported with ``tools/import_weights.py xrv_densenet``
and run through ``configs/weights_xrv.json``.

A published model only gives its published outputs on the input it was trained on. torchxrayvision (xrv) scales an
image to [-1024, 1024] (``(2 * value / maxval - 1) * 1024``), centre-crops it to a square, resizes it with
scikit-image's anti-aliased bilinear ``resize`` to 224 px, and with published weights turns each sigmoid output into
a probability whose operating point ("op_threshs", chosen by xrv on its validation data) sits at 0.5. This bundle's
own pipeline (percentile window, area resize, plain sigmoid) differs in every step, so each step is reproduced here
on the images ``LoadCXRd`` decodes (``value / maxval`` in [0, 1]); the scaling itself is MONAI's
``NormalizeIntensityd`` (subtract 0.5, divide by 1/2048). The bundle never imports torchxrayvision.

The imported checkpoint says which labels its outputs are (``info["labels"]``, in this bundle's label order) and
carries xrv's thresholds for them, so one override file serves every xrv variant (NIH, "all", CheXpert).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import CenterSpatialCrop, MapTransform

from common.checkpoint import CheckpointError, CheckpointInfo, load_checkpoint
from common.flags import as_bool

SOURCE = "xrv_densenet"


def imported_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``info`` that ``tools/import_weights.py xrv_densenet`` stored beside the weights; clear error otherwise."""
    info = load_checkpoint(path).get("info")
    if not isinstance(info, Mapping) or info.get("source") != SOURCE:
        raise CheckpointError(
            f"{path}: not a torchxrayvision import (its 'info' has no source '{SOURCE}'); configs/weights_xrv.json "
            "runs checkpoints written by: python tools/import_weights.py xrv_densenet <xrv file> <output>"
        )
    return dict(info)


def imported_labels(path: str | os.PathLike) -> list[str]:
    """The finding names of the imported model's outputs, in output order (this bundle's label order)."""
    return [str(name) for name in imported_info(path)["labels"]]


def imported_thresholds(path: str | os.PathLike) -> list[float]:
    """xrv's operating points of the imported outputs, in output order."""
    return [float(t) for t in imported_info(path)["op_threshs"]]


def fine_tuned_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """The ``info`` a model fine-tuned from the import ``path`` is saved with (``train.json`` + ``weights_xrv.json``):
    the import's, so that ``weights_xrv.json`` runs the result as it runs the import (same labels and outputs), plus
    ``fine_tuned_from``. Its ``op_threshs`` stay the publisher's operating points, which fine-tuning does not
    re-derive: ``--xrv_recalibrate false`` gives plain sigmoid probabilities."""
    return CheckpointInfo(**imported_info(path), fine_tuned_from=str(path))


class SquareCenterCropd(MapTransform):
    """Crop (C, H, W) to the centred min(H, W) square, with the offsets of xrv's ``XRayCenterCrop``
    (``size // 2 - crop // 2``, which is MONAI's ``CenterSpatialCrop`` rule)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            side = min(d[key].shape[1:])
            d[key] = CenterSpatialCrop(roi_size=(side, side))(d[key])
        return d


class XRVResized(MapTransform):
    """Resize (1, H, W) to (1, size, size) exactly as xrv's ``XRayResizer`` (its default "skimage" engine):
    ``skimage.transform.resize(img, (1, size, size), mode="constant", preserve_range=True)`` as float32.

    Why not MONAI's ``Resized``: scikit-image smooths with a Gaussian before a downsampling and pads with zeros
    (mid-grey after xrv's scaling, so the scaling must come first); no MONAI mode gives the same pixels.
    """

    def __init__(self, keys: KeysCollection, size: int = 224, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = int(size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from skimage.transform import resize

        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
            if array.ndim != 3 or array.shape[0] != 1:
                raise ValueError(f"XRVResized expects a (1, H, W) image, got shape {array.shape}")
            out = resize(array, (1, self.size, self.size), mode="constant", preserve_range=True).astype(np.float32)
            resized = torch.from_numpy(out)
            if isinstance(image, MetaTensor):
                affine = image.affine.clone()
                affine[:2, :2] = affine[:2, :2] * torch.tensor([array.shape[1] / self.size, array.shape[2] / self.size])
                meta = {k: v for k, v in image.meta.items() if k != "affine"}
                resized = MetaTensor(resized, affine=affine, meta={**meta, "spatial_shape": np.asarray(out.shape[1:])})
            d[key] = resized
        return d


class OperatingPointsd(MapTransform):
    """xrv's ``op_norm``: a probability p of a label with operating point t becomes p / (2t) below t and
    1 - (1 - p) / (2 (1 - t)) above, so t maps to 0.5 and the order of scores within a label is kept (AUROC
    unchanged). Computed in float32 like xrv, on ``pred`` after the sigmoid. ``enabled=False`` (``--xrv_recalibrate
    false``) passes the sigmoid outputs through, as xrv does with ``op_threshs=None, apply_sigmoid=True``."""

    def __init__(
        self,
        keys: KeysCollection,
        thresholds: Sequence[float],
        enabled: bool | str = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = as_bool(enabled)  # from the command line "false" arrives as a string
        bad = [t for t in thresholds if not (math.isfinite(float(t)) and 0.0 < float(t) < 1.0)]
        if bad:
            raise ValueError(f"operating points must lie strictly between 0 and 1, got {bad}")
        self.thresholds = torch.tensor([float(t) for t in thresholds], dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            p = torch.as_tensor(d[key])
            if p.shape[0] != len(self.thresholds):
                raise ValueError(f"'{key}' has {p.shape[0]} outputs but {len(self.thresholds)} operating points")
            t = self.thresholds.to(p.device).view(-1, *[1] * (p.dim() - 1))
            d[key] = torch.where(p < t, p / (t * 2), 1.0 - (1.0 - p) / ((1 - t) * 2))
        return d
