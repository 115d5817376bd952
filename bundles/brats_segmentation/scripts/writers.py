"""Write predicted segmentations back in the input's space and the edition's label values.

MONAI's ``SaveImaged`` rebuilds the NIfTI header from the affine; here the first modality's own header is
copied (qform/sform codes, units, description), so the seg overlays the inputs in any viewer. Files are
written to a temporary name and renamed, so an interrupted run leaves no half-written segmentation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from common.files import atomic_path


def write_seg(labels: np.ndarray, reference: str | Path, output: str | Path) -> Path:
    """Save a label map with the header and affine of ``reference`` (uint8), atomically."""
    ref = nib.load(str(reference))
    if tuple(labels.shape) != tuple(ref.shape[:3]):
        raise ValueError(f"{reference}: prediction shape {labels.shape} differs from the input shape {ref.shape}")
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    img = nib.Nifti1Image(labels.astype(np.uint8), ref.affine, header=header)
    output = Path(output)
    with atomic_path(output) as tmp:
        nib.save(img, str(tmp))
    return output


def write_overlay(background: np.ndarray, labels: np.ndarray, output: str | Path, title: str = "") -> Path:
    """PNG of the axial slice with the most tumour: FLAIR in grey, labels in colour (by rank of value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    area = (labels > 0).sum(axis=(0, 1))
    z = int(area.argmax()) if area.any() else labels.shape[2] // 2
    values = [v for v in np.unique(labels) if v > 0]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(np.rot90(background[:, :, z]), cmap="gray")
    colours = {0: (1.0, 0.2, 0.2), 1: (0.2, 1.0, 0.2), 2: (1.0, 1.0, 0.2), 3: (0.3, 0.5, 1.0)}
    overlay = np.zeros((*labels.shape[:2], 4))
    for v in values:
        overlay[labels[:, :, z] == v] = (*colours[[1, 2, 3, 4].index(v) if v in (1, 2, 3, 4) else 3], 0.45)
    ax.imshow(np.rot90(overlay))
    ax.set_title(f"{title} z={z} labels {values}")
    ax.axis("off")
    output = Path(output)
    with atomic_path(output) as tmp:
        fig.savefig(str(tmp), format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return output


class SaveBratsSegd(MapTransform):
    """Postprocessing step: a label map -> ``<output_dir>/<case>_seg.nii.gz`` (+ optional PNG overlay).

    Expects the (1, H, W, D) label map of ``scripts.brats.RegionsToLabelsd`` (the edition's values); the header
    and affine are those of the first image file (T1c, or the single 4-channel file).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        image_key: str = "image",
        overlay: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.overlay = overlay

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        reference = image.meta["filename_or_obj"]
        reference = reference[0] if isinstance(reference, (list, tuple)) else reference
        case = str(d.get("case") or Path(reference).name.split(".")[0])
        for key in self.key_iterator(d):
            labels = convert_to_numpy(d[key])
            if labels.ndim == 4:
                if labels.shape[0] != 1:
                    raise ValueError(f"{key}: expected a (1, H, W, D) label map, got {labels.shape}")
                labels = labels[0]
            labels = labels.astype(np.uint8)
            write_seg(labels, reference, self.output_dir / f"{case}_seg.nii.gz")
            if self.overlay:
                write_overlay(convert_to_numpy(image)[3], labels, self.output_dir / f"{case}_overlay.png", title=case)
        return d
