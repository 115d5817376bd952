"""Synthetic BraTS-like cases written in the real 2021 or 2023 on-disk layout (for tests, the CPU demo and CI).

Each case is a skull-stripped adult brain scaled to the requested grid as if it were BraTS's 240x240x155 at 1 mm
(a 96x96x64 demo case is a real-proportioned brain at 2.5 mm): cerebrum, temporal lobes, cerebellum and
brainstem; a cortical ribbon that folds along sulci; white matter, deep grey nuclei, ventricles, the
interhemispheric fissure. One glioma per case in the cerebral white matter pushes the anatomy aside (mass effect),
with an irregular enhancing rim, a necrotic core and vasogenic oedema that spreads through white matter and spares
the cortex; about one case in five has no enhancing tumour (a non-enhancing core, as in lower-grade gliomas).
Contrast per tissue and modality follows clinical MRI (``CONTRAST``; the T1 ratios are those of the MNI152
template, checked in the bundle's tests), with partial volume, bias field and Rician noise. The BraTS affine
(``diag(-1, -1, 1)``); axis 0 left-right, axis 1 front to back, axis 2 bottom to top.

    python -m scripts.synthetic --out_dir /tmp/brats_synth --n_cases 40 --layout 2021 --size "[96,96,64]"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from common.files import atomic_path

MODALITIES = ("t1c", "t1", "t2", "flair")
LAYOUTS = {
    # layout: (case id format, separator, file suffix per modality in MODALITIES order, label values NCR/ED/ET)
    "2021": ("BraTS2021_{:05d}", "_", ("t1ce", "t1", "t2", "flair"), (1, 2, 4)),
    "2023": ("BraTS-GLI-{:05d}-000", "-", ("t1c", "t1n", "t2w", "t2f"), (1, 2, 3)),
}
BRATS_GRID_MM = (240.0, 240.0, 155.0)  # the real BraTS grid at 1 mm; anatomy is scaled to the requested size
BRAIN_SEMI_AXES_MM = (70.0, 86.0, 70.0)  # half the extent of an adult brain, left-right, front-back, up-down

# tissue codes of the anatomy map
BACKGROUND, WM, GM, DEEP_GM, CSF = 0, 1, 2, 3, 4
TISSUES = {WM: "wm", GM: "gm", DEEP_GM: "deep_gm", CSF: "csf"}

# Mean intensity per tissue and modality (T1c, T1, T2, FLAIR) relative to cortical grey matter. Orderings follow
# clinical MRI: T1 WM > GM > CSF (WM/GM 1.33 and CSF/GM 0.41 in the MNI152 2009a T1 template:
# tests/test_brats_twin.py); T2 CSF > GM > WM; FLAIR GM > WM > CSF (CSF suppressed); oedema bright on T2 and the
# brightest tissue on FLAIR; enhancing tumour the brightest on T1c; necrosis dark on T1/T1c and bright on T2.
CONTRAST = {
    "wm": (1.28, 1.33, 0.72, 0.84),
    "gm": (1.00, 1.00, 1.00, 1.00),
    "deep_gm": (1.10, 1.12, 0.86, 0.93),
    "csf": (0.38, 0.41, 2.20, 0.30),
    "edema": (0.92, 0.96, 1.75, 1.65),
    "necrosis": (0.45, 0.55, 1.95, 1.05),
    "enhancing": (2.00, 1.05, 1.20, 1.30),
    "nonenhancing": (0.82, 0.86, 1.65, 1.45),
    "sinus": (1.90, 0.60, 0.60, 0.50),  # dural venous sinus along the falx: enhances on T1c
}


def brats_affine(size: Sequence[int]) -> np.ndarray:
    """The affine BraTS releases use (LPS-flipped x/y, 1 mm)."""
    return np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, size[1] - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def voxels_per_mm(size: Sequence[int]) -> np.ndarray:
    """Voxels per mm of the anatomy drawn on a grid of ``size``: the grid stands for BraTS's 240x240x155 mm."""
    return np.array(size, np.float32) / np.array(BRATS_GRID_MM, np.float32)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (wide fields drawn coarse and upsampled, for speed)."""
    step = max(1, int(sigma // 2))
    coarse = [max(2, -(-int(s) // step)) for s in shape]
    f = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / step, mode="wrap")
    if step > 1:
        f = ndimage.zoom(f, [s / c for s, c in zip(shape, coarse)], order=1)[tuple(slice(0, int(s)) for s in shape)]
    return (f - f.mean()) / (f.std() + 1e-8)


def _ellipsoid(rel: np.ndarray, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Inside an ellipsoid given in the brain's normalised coordinates."""
    return sum(((rel[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) < 1.0


def make_anatomy(rng: np.random.Generator, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A skull-stripped adult brain: (tissue codes, voxels per mm along each axis).

    Cerebrum with a flattened base, temporal lobes, a cerebellum below the tentorium and a brainstem; the
    interhemispheric fissure; a cortical ribbon about 3 mm thick that follows sulci cut from the surface (so
    it folds); deep grey nuclei; lateral and third ventricles whose size varies (age, atrophy). Axis 0 runs
    left-right, axis 1 front (low index) to back, axis 2 bottom to top, as in BraTS volumes.
    """
    size = tuple(int(s) for s in size)
    vox_per_mm = voxels_per_mm(size)
    semi = np.array(BRAIN_SEMI_AXES_MM, np.float32) * vox_per_mm * rng.uniform(0.9, 1.06, 3)
    centre = np.array(size, np.float32) / 2 + rng.uniform(-1.5, 1.5, 3) * vox_per_mm
    # the vertex just inside the top slice; the cerebellum and brainstem fill the lower slices
    centre[2] = min(size[2] * 0.5 + semi[2] * 0.06, size[2] - 1.5 * float(vox_per_mm[2]) - semi[2])
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij"))
    rel = (grid - centre[:, None, None, None]) / semi[:, None, None, None]
    x, y, z = rel
    wobble = 0.035 * _smooth_noise(rng, size, max(1.0, 8 * float(vox_per_mm.mean())))
    # cerebrum: wider at the back, flattened base, temporal lobes bulging down at the sides
    xs = x / (1.0 + 0.10 * y)
    zs = np.where(z < 0, z * 1.45, z)
    cerebrum = (xs**2 + y**2 + zs**2 + wobble) < 1.0
    for side in (-1, 1):
        cerebrum |= _ellipsoid(rel, (side * 0.62, -0.12, -0.45), (0.32, 0.48, 0.30))
    cerebrum &= z > -0.78
    cerebellum = _ellipsoid(rel, (0.0, 0.50, -0.66), (0.66, 0.40, 0.34)) & ~cerebrum
    stem = ((x / 0.14) ** 2 + ((y - 0.22) / 0.16) ** 2 < 1.0) & (z < -0.2) & (z > -1.1)
    brain = cerebrum | cerebellum | stem
    # tentorium: a thin CSF sheet between cerebrum and cerebellum
    tentorium = cerebellum & ndimage.binary_dilation(cerebrum, iterations=1)
    # interhemispheric fissure above the corpus callosum
    half_width = max(0.5, 1.0 * float(vox_per_mm[0])) / semi[0]
    fissure = (np.abs(x - 0.02 * _smooth_noise(rng, size, 6)) < half_width) & (z > 0.28 - 0.25 * np.abs(y)) & cerebrum
    # sulci: thin sheets along the zero set of a smooth field, cut from the surface 14-22 mm deep
    depth = ndimage.distance_transform_edt(brain, sampling=1.0 / vox_per_mm)  # mm to the brain's surface
    fold = _smooth_noise(rng, size, max(1.3, 2.4 * float(vox_per_mm.mean())))
    sulcus_depth = rng.uniform(14.0, 22.0) * (1 + 0.3 * _smooth_noise(rng, size, 4))
    band = 0.22 * max(1.0, 1.0 / float(vox_per_mm.mean()) * 0.4)
    sulci = cerebrum & (np.abs(fold) < band) & (depth < sulcus_depth)
    folia = _smooth_noise(rng, size, max(0.8, 1.6 * float(vox_per_mm.mean())))  # finer folds of the cerebellum
    sulci |= cerebellum & (np.abs(folia) < band) & (depth < 8.0)
    csf_outer = ~brain | sulci | fissure | tentorium
    # grey matter: the ribbon within ~3 mm of any CSF surface (outer surface or a sulcus)
    to_csf = ndimage.distance_transform_edt(~csf_outer, sampling=1.0 / vox_per_mm)
    # below ~2 voxels a ribbon breaks up on the grid: small grids get a relatively thicker one, which keeps the
    # grey-matter fraction of the real brain (about half of the parenchyma) instead of the physical thickness
    thickness = max(3.2, 2.0 / float(vox_per_mm.min())) * (1 + 0.12 * _smooth_noise(rng, size, 5))
    tissue = np.zeros(size, np.int8)
    tissue[brain] = WM
    tissue[brain & (to_csf <= thickness)] = GM
    tissue[cerebellum & (to_csf <= 2 * thickness)] = GM  # the cerebellar cortex is mostly grey matter
    # deep grey nuclei (thalami, basal ganglia)
    for side in (-1, 1):
        tissue[_ellipsoid(rel, (side * 0.17, 0.08, 0.02), (0.13, 0.20, 0.16))] = DEEP_GM
        tissue[_ellipsoid(rel, (side * 0.33, -0.16, 0.06), (0.10, 0.26, 0.20))] = DEEP_GM
    # ventricles: curved lateral ventricles, a thin third ventricle
    widen = rng.uniform(0.7, 1.7)
    for side in (-1, 1):
        # frontal horns diverge forwards, the bodies run back and curve down into the atria
        bend = 0.22 - 0.55 * (y - 0.05) ** 2
        lateral_x = side * (0.09 + 0.10 * (y + 0.1) ** 2)
        width = 0.05 * widen * (1 + 0.6 * np.clip(y - 0.2, 0, None) + 0.4 * np.clip(-y - 0.3, 0, None))
        lateral = ((x - lateral_x) / width) ** 2 + ((z - bend) / (0.075 * widen)) ** 2 + ((y - 0.02) / 0.6) ** 2
        tissue[lateral < 1.0] = CSF
    tissue[(np.abs(x) < 0.022 * widen) & (np.abs(y - 0.05) < 0.14) & (np.abs(z + 0.02) < 0.12)] = CSF
    tissue[sulci | fissure | tentorium] = CSF
    tissue[~brain] = BACKGROUND
    return tissue, vox_per_mm


def place_tumour(
    rng: np.random.Generator, tissue: np.ndarray, vox_per_mm: np.ndarray, enhancing: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A glioma in the cerebral white matter: (tissue displaced by it, label 0 bg/1 NCR/2 ED/3 ET, and for each
    voxel the (3, ...) voxel coordinates its anatomy came from, to displace other maps the same way).

    The core (10-50 mm) pushes the surrounding anatomy outwards with its volume kept (midline shift, squeezed
    ventricles) while the brain's outline stays put, as inside a skull. Vasogenic oedema spreads through white
    matter and deep grey matter, sparing the cortex; the enhancing rim is irregular; without enhancement (a
    lower-grade glioma) the whole core is non-enhancing tumour, labelled as NCR/NET.
    """
    size = tissue.shape
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij"))
    mm = grid / vox_per_mm[:, None, None, None]
    depth = ndimage.distance_transform_edt(tissue > 0, sampling=1.0 / vox_per_mm)
    candidates = np.argwhere((tissue == WM) & (depth > 12.0))
    if len(candidates) == 0:
        candidates = np.argwhere(tissue > 0)
    centre = candidates[rng.integers(len(candidates))] / vox_per_mm  # mm
    radii = rng.uniform(9.0, 26.0) * rng.uniform(0.75, 1.25, 3)
    rel = (mm - centre[:, None, None, None]) / radii[:, None, None, None]
    dist = np.sqrt((rel**2).sum(0))  # 1 on the core's mean surface
    # mass effect: anatomy at radius rho comes from radius (rho^3 - R^3)^(1/3), fading to none at the surface
    inserted = rng.uniform(0.6, 0.9)  # radius of the volume the core adds, relative to its own
    src = np.cbrt(np.clip(dist**3 - inserted**3, 0, None))
    fade = np.clip(depth / 10.0, 0, 1)
    scale = np.where(dist > 1e-6, 1 - fade * (1 - src / np.maximum(dist, 1e-6)), 1)
    src_vox = (centre[:, None, None, None] + (mm - centre[:, None, None, None]) * scale) * vox_per_mm[
        :, None, None, None
    ]
    displaced = ndimage.map_coordinates(tissue, src_vox, order=0, mode="nearest").astype(np.int8)
    displaced[tissue == BACKGROUND] = BACKGROUND
    brain = displaced > 0
    noise = _smooth_noise(rng, size, max(1.0, 6 * float(vox_per_mm.mean())))
    core = (dist + 0.18 * noise < 1.0) & brain
    label = np.zeros(size, np.uint8)
    reach = rng.uniform(0.3, 1.3)
    spread = dist + 0.3 * _smooth_noise(rng, size, max(1.5, 8 * float(vox_per_mm.mean())))
    label[(spread < 1.0 + reach) & np.isin(displaced, (WM, DEEP_GM))] = 2
    if enhancing:
        rim_mm = max(rng.uniform(3.0, 9.0), 2.2 / float(vox_per_mm.min())) * (1 + 0.3 * _smooth_noise(rng, size, 3))
        inside = ndimage.distance_transform_edt(core, sampling=1.0 / vox_per_mm)
        label[core] = 3
        label[core & (inside > rim_mm)] = 1
    else:
        label[core] = 1
    displaced[core] = WM  # the core replaces tissue; its contrast comes from the label
    return displaced, label, src_vox


def render(
    rng: np.random.Generator, tissue: np.ndarray, label: np.ndarray, vox_per_mm: np.ndarray, enhancing: bool = True
) -> np.ndarray:
    """The four modalities (MODALITIES order) as a scanner writes them: partial volume at tissue borders, mild
    texture, a multiplicative bias field per modality, Rician noise, an arbitrary scale; 0 outside the brain."""
    size = tissue.shape
    brain = tissue > 0
    classes = [(tissue == code) & (label == 0) for code in TISSUES] + [label == 2, label == 3, label == 1]
    names = [*TISSUES.values(), "edema", "enhancing", "necrosis" if enhancing else "nonenhancing"]
    fissure_sinus = (tissue == CSF) & (label == 0)
    images = np.zeros((4, *size), np.float32)
    texture = _smooth_noise(rng, size, 1.0)
    pv = max(0.4, 0.8 * float(vox_per_mm.mean()))
    for m in range(4):
        img = np.zeros(size, np.float32)
        for mask, name in zip(classes, names):
            img[mask] = CONTRAST[name][m]
        if m == 0:  # superior sagittal sinus: the fissure's top enhances on T1c
            top = fissure_sinus & (np.arange(size[2]) > size[2] * 0.75)[None, None, :]
            img[top] = CONTRAST["sinus"][m]
        images[m] = ndimage.gaussian_filter(img, pv) + 0.03 * texture
    return acquire(rng, images, brain)


def acquire(rng: np.random.Generator, images: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """What the scanner and skull-stripping add to noise-free (4, ...) contrast maps: a multiplicative bias field
    per modality, Rician noise (magnitude images), an arbitrary intensity scale, zero outside the brain."""
    out = np.zeros_like(images, dtype=np.float32)
    for m in range(len(images)):
        img = images[m] * (1 + rng.uniform(0.06, 0.15) * _smooth_noise(rng, brain.shape, 12))
        sigma = rng.uniform(0.025, 0.05)
        noise = sigma * rng.standard_normal((2, *brain.shape))
        img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2) * rng.uniform(400, 1200)
        out[m] = np.where(brain, np.clip(img, 1, None), 0)
    return out


def make_case(
    rng: np.random.Generator, size: Sequence[int] = (96, 96, 64), enhancing: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One case: (4, *size) float32 images in MODALITIES order, and a label map 0 bg/1 necrosis/2 edema/3 ET."""
    tissue, vox_per_mm = make_anatomy(rng, size)
    tissue, label, _ = place_tumour(rng, tissue, vox_per_mm, enhancing)
    return render(rng, tissue, label, vox_per_mm, enhancing), label


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
