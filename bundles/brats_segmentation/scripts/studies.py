"""One BraTS case folder -> one 4-channel NIfTI study (and its seg), for tools that store one image per case.

MONAI Label's datastore lists one image file per study, so the 4 modalities are stacked as (x, y, z, 4) in the
network's channel order T1c, T1, T2, FLAIR (``scripts.brats.LoadBratsCased`` reads that back):

    python -m scripts.studies --case_dir BraTS2021_00000 --output studies/BraTS2021_00000.nii.gz \
        --label_output studies/labels/final/BraTS2021_00000.nii.gz
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from common.files import atomic_path
from scripts.prepare import find_case


def stack_case(case_dir: str | Path, output: str | Path, label_output: str | Path | None = None) -> Path:
    """Write the case's modalities as one float32 4D NIfTI with the T1c header's affine; copy the seg if asked."""
    item = find_case(Path(case_dir), require_label=label_output is not None)
    imgs = [nib.load(f) for f in item["image"]]
    data = np.stack([np.asarray(img.dataobj, dtype=np.float32) for img in imgs], axis=-1)
    header = imgs[0].header.copy()
    header.set_data_dtype(np.float32)
    output = Path(output)
    with atomic_path(output) as tmp:
        nib.save(nib.Nifti1Image(data, imgs[0].affine, header=header), str(tmp))
    if label_output is not None:
        with atomic_path(Path(label_output)) as tmp:
            shutil.copyfile(item["label"], tmp)
    return output


if __name__ == "__main__":
    import fire

    fire.Fire(stack_case)
