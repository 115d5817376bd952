"""Synthetic BraTS-like cases written in the real 2021 or 2023 on-disk layout (for tests and the CPU demo).

Each case is a skull-stripped head (background 0 outside the brain) with white matter, grey matter and
ventricles, and one glioma: a necrotic core, an enhancing rim and surrounding edema whose contrast follows
real MRI (edema bright on FLAIR/T2, rim bright on T1c, necrosis dark on T1c and bright on T2, CSF bright on
T2 but dark on FLAIR). Size, shape, position, bias field and noise vary per case; about one case in five
has no enhancing tumour (a non-enhancing core only, as in lower-grade gliomas). 1 mm isotropic voxels with
the BraTS affine (``diag(-1, -1, 1)``); the volume size is a parameter (real BraTS: 240x240x155).

    python -m scripts.synthetic --out_dir /tmp/brats_synth --n_cases 40 --layout 2021 --size "[96,96,64]"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from common.files import atomic_path

# mean intensity per tissue and modality (T1c, T1, T2, FLAIR), arbitrary units
TISSUE = {
    "wm": (0.75, 0.80, 0.35, 0.45),
    "gm": (0.55, 0.60, 0.55, 0.60),
    "csf": (0.15, 0.15, 1.00, 0.10),
    "edema": (0.52, 0.55, 0.85, 0.95),
    "necrosis": (0.20, 0.30, 0.95, 0.50),
    "enhancing": (1.20, 0.60, 0.65, 0.80),
    "nonenhancing": (0.42, 0.48, 0.80, 0.80),
}
MODALITIES = ("t1c", "t1", "t2", "flair")
LAYOUTS = {
    # layout: (case id format, separator, file suffix per modality in MODALITIES order, label values NCR/ED/ET)
    "2021": ("BraTS2021_{:05d}", "_", ("t1ce", "t1", "t2", "flair"), (1, 2, 4)),
    "2023": ("BraTS-GLI-{:05d}-000", "-", ("t1c", "t1n", "t2w", "t2f"), (1, 2, 3)),
}


def brats_affine(size: Sequence[int]) -> np.ndarray:
    """The affine BraTS releases use (LPS-flipped x/y, 1 mm)."""
    return np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, size[1] - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (wide fields drawn coarse and upsampled, for speed)."""
    step = max(1, int(sigma // 2))
    coarse = [max(2, -(-int(s) // step)) for s in shape]
    f = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / step, mode="wrap")
    if step > 1:
        f = ndimage.zoom(f, [s / c for s, c in zip(shape, coarse)], order=1)[tuple(slice(0, int(s)) for s in shape)]
    return (f - f.mean()) / (f.std() + 1e-8)


def make_case(
    rng: np.random.Generator, size: Sequence[int] = (96, 96, 64), enhancing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One case: (4, *size) float32 images in MODALITIES order, and a label map 0 bg/1 necrosis/2 edema/3 ET."""
    size = tuple(int(s) for s in size)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij"))
    centre = np.array(size, np.float32) / 2 + rng.uniform(-2, 2, 3)
    radii = np.array(size, np.float32) * np.array([0.40, 0.45, 0.42]) * rng.uniform(0.9, 1.02, 3)
    rel = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
    r = np.sqrt((rel**2).sum(0)) + 0.05 * _smooth_noise(rng, size, 6)
    brain = r < 1.0
    # tissues: grey-matter shell with folds, white matter inside, two ventricles, sulcal CSF near the surface
    tissue = np.full(size, 1, np.int8)  # 1 wm
    folds = _smooth_noise(rng, size, 1.5)
    tissue[(r > 0.72 + 0.06 * folds)] = 2  # gm
    tissue[(r > 0.9) & (folds > 0.9)] = 3  # csf
    for side in (-1, 1):
        vc = centre + np.array([side * radii[0] * 0.15, radii[1] * 0.05, radii[2] * 0.05])
        vr = radii * np.array([0.08, 0.30, 0.15]) * rng.uniform(0.7, 1.3)
        tissue[(((grid - vc[:, None, None, None]) / vr[:, None, None, None]) ** 2).sum(0) < 1] = 3
    # tumour: anisotropic blob with irregular border, placed off-centre inside the brain
    while True:
        tc = centre + rng.uniform(-0.55, 0.55, 3) * radii
        if np.sqrt((((tc - centre) / radii) ** 2).sum()) < 0.6:
            break
    tr = radii.min() * rng.uniform(0.15, 0.38) * rng.uniform(0.75, 1.25, 3)
    d = np.sqrt((((grid - tc[:, None, None, None]) / tr[:, None, None, None]) ** 2).sum(0))
    d_core = d + 0.18 * _smooth_noise(rng, size, 2.5)
    core = (d_core < 1.0) & brain
    label = np.zeros(size, np.uint8)
    d_edema = d + 0.35 * _smooth_noise(rng, size, 3.0)
    label[(d_edema < 1.0 + rng.uniform(0.4, 1.3)) & brain & (tissue != 3)] = 2
    if enhancing:
        necrosis = core & (d_core < rng.uniform(0.45, 0.75))
        label[core] = 3
        label[necrosis] = 1
    else:
        label[core] = 1
    # intensities
    images = np.zeros((4, *size), np.float32)
    texture = 0.04 * _smooth_noise(rng, size, 1.0)
    for m in range(4):
        img = np.zeros(size, np.float32)
        for value, name in ((1, "wm"), (2, "gm"), (3, "csf")):
            img[tissue == value] = TISSUE[name][m]
        img[label == 2] = TISSUE["edema"][m]
        img[label == 3] = TISSUE["enhancing"][m]
        img[label == 1] = TISSUE["necrosis" if enhancing else "nonenhancing"][m]
        img = ndimage.gaussian_filter(img, 0.7) + texture
        img *= 1 + 0.12 * _smooth_noise(rng, size, 12)  # bias field
        img += rng.uniform(0.03, 0.07) * rng.standard_normal(size).astype(np.float32)
        img *= rng.uniform(600, 1400)  # scanner scale
        images[m] = np.where(brain, np.clip(img, 1, None), 0)
    return images, label


def write_case(out_dir: str | Path, index: int, images: np.ndarray, label: np.ndarray, layout: str = "2021") -> Path:
    """Write one case in the BraTS ``layout`` (int16 images, uint8 seg with the edition's label values)."""
    fmt, sep, suffixes, (ncr, ed, et) = LAYOUTS[layout]
    case = fmt.format(index)
    case_dir = Path(out_dir) / case
    case_dir.mkdir(parents=True, exist_ok=True)
    affine = brats_affine(label.shape)
    seg = np.zeros(label.shape, np.uint8)
    seg[label == 1], seg[label == 2], seg[label == 3] = ncr, ed, et
    arrays = [(s, np.rint(images[i]).astype(np.int16)) for i, s in enumerate(suffixes)] + [("seg", seg)]
    for suffix, arr in arrays:
        img = nib.Nifti1Image(arr, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        with atomic_path(case_dir / f"{case}{sep}{suffix}.nii.gz") as tmp:
            nib.save(img, str(tmp))
    return case_dir


def generate(
    out_dir: str | Path,
    n_cases: int = 40,
    layout: str = "2021",
    size: Sequence[int] = (96, 96, 64),
    seed: int = 0,
    no_enhancing_fraction: float = 0.2,
) -> list[Path]:
    """Write ``n_cases`` synthetic cases under ``out_dir`` in the given layout ("2021" or "2023")."""
    layout = str(layout)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    rng = np.random.default_rng(seed)
    dirs = []
    for i in range(n_cases):
        enhancing = rng.uniform() >= no_enhancing_fraction
        images, label = make_case(rng, size, enhancing=enhancing)
        dirs.append(write_case(out_dir, i, images, label, layout))
    return dirs


def main(out_dir: str, n_cases: int = 40, layout: str = "2021", size: Sequence[int] = (96, 96, 64), seed: int = 0):
    dirs = generate(out_dir, n_cases, layout, size, seed)
    print(f"wrote {len(dirs)} synthetic BraTS {layout} cases of size {tuple(size)} to {out_dir}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
