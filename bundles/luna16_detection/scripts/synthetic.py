"""Synthetic chest CT in the real LUNA16 on-disk layout, so every command of the bundle can be exercised without data.

Writes ``subset0..subset{n-1}/<seriesuid>.mhd/.raw`` (int16 HU, ITK/LPS physical space with a non-trivial
origin, anisotropic spacing and a slightly oblique direction), ``annotations.csv`` and
``annotations_excluded.csv`` with world-mm centres, exactly like the challenge files. Scenes are built in world
coordinates and sampled at every voxel's physical position, so an annotation is the true nodule centre whatever
the scan geometry. Content: a body, two lungs, vessels (tubes, the main false-positive source), nodules
3-30 mm (some touching the pleura, some ground-glass), small excluded findings, and scans without nodules.

    python -m scripts.synthetic --out_dir /tmp/luna_synth --n_scans 60 --size 96 96 48
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001.9"  # LUNA16-like root; the suffix is made up


@dataclass
class Finding:
    """A spherical finding in world mm (LPS); ``diameter`` -1 marks an excluded finding of unknown size."""

    centre: np.ndarray
    diameter: float


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Small random rotation (about z, then x): LUNA16 directions are near identity, a few are oblique."""
    a, b = np.deg2rad(rng.uniform(-max_deg, max_deg, size=2))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


def _smooth_inside(dist: np.ndarray, edge: float = 0.5) -> np.ndarray:
    """Soft indicator of ``dist < 0`` (partial-volume edge of ``edge`` mm)."""
    return 1.0 / (1.0 + np.exp(np.clip(dist / edge, -30, 30)))


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def make_scan(
    rng: np.random.Generator,
    size: tuple[int, int, int] = (96, 96, 48),
    n_nodules: int = 2,
    oblique: bool = False,
    max_oblique_deg: float = 6.0,
    noise_hu: float = 25.0,
    spacing: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, dict, list[Finding], list[Finding]]:
    """One scan: array [z, y, x] int16 HU, ITK geometry, nodules, excluded findings (all world mm, LPS).

    ``spacing`` (x, y, z mm) fixes the voxel size; by default it is drawn from LUNA16's usual range (in-plane
    0.7-0.95 mm, slices 1.0-2.5 mm); it is drawn either way, so the draws that follow stay the same.
    """
    nx, ny, nz = size
    drawn = [rng.uniform(0.7, 0.95)] * 2 + [rng.uniform(1.0, 2.5)]
    spacing = np.array(drawn if spacing is None else spacing, dtype=float)
    direction = _rotation(rng, max_oblique_deg) if oblique else np.eye(3)
    origin = np.array([rng.uniform(-220, -150), rng.uniform(-250, -150), rng.uniform(-350, -100)])

    # physical position of every voxel (ITK: p = origin + D @ (spacing * index)), index order x, y, z
    kk, jj, ii = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([ii, jj, kk], axis=-1).astype(np.float32)
    world = (idx * spacing.astype(np.float32)) @ direction.T.astype(np.float32) + origin.astype(np.float32)
    extent = spacing * (np.array(size) - 1)
    centre = origin + direction @ (extent / 2)
    rel = world - centre.astype(np.float32)
    # body axes follow the scanner axes: local = spacing * index - extent / 2
    local = rel @ direction.astype(np.float32)

    def region(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice]:
        """Array slices [z, y, x] covering the local-coordinate box [lo, hi] (shapes are drawn only there)."""
        a = np.floor((lo + extent / 2) / spacing).astype(int).clip(0, np.array(size))
        b = (np.ceil((hi + extent / 2) / spacing).astype(int) + 1).clip(0, np.array(size))
        return slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0])

    def draw_sphere(p: np.ndarray, diameter: float, level: float) -> None:
        sl = region(p - diameter / 2 - 2, p + diameter / 2 + 2)
        dist = np.linalg.norm(local[sl] - p.astype(np.float32), axis=-1) - diameter / 2
        hu[sl] = np.maximum(hu[sl], -850 + _smooth_inside(dist, 0.4) * (level + 850))

    hu = np.full(world.shape[:3], -1000.0, dtype=np.float32)
    body = ((local[..., 0] / (0.47 * extent[0])) ** 2 + (local[..., 1] / (0.42 * extent[1])) ** 2) - 1
    hu += _smooth_inside(body * 20) * 1040.0  # soft tissue ~ 40 HU

    lungs = []
    for side in (-1, 1):
        c = np.array([side * 0.22 * extent[0], 0.0, 0.0])
        semi = np.array([0.19 * extent[0], 0.33 * extent[1], 0.65 * extent[2]])  # cut by the scan ends
        lungs.append((c, semi))
        u = np.linalg.norm((local - c.astype(np.float32)) / semi.astype(np.float32), axis=-1)
        hu -= _smooth_inside((u - 1) * semi.min()) * 890.0  # lung parenchyma ~ -850 HU

    def lung_point(pleural: bool, radius: float) -> np.ndarray:
        c, semi = lungs[rng.integers(2)]
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        reach = 1.0 / np.linalg.norm(v / semi)  # distance to the lung surface along v
        if pleural:  # centre just inside the surface, the nodule touches the pleura
            r = reach - 0.8 * radius
        else:
            r = rng.uniform(0.0, 1.0) ** (1 / 3) * max(reach - radius - 3.0, 0.0)
        point = c + max(r, 0.0) * v
        z_limit = max(extent[2] / 2 - radius - 1.0, 0.0)  # the lungs run past the scan ends; findings stay inside
        point[2] = np.clip(point[2], -z_limit, z_limit)
        return point

    def to_world(p_local: np.ndarray) -> np.ndarray:
        return centre + direction @ p_local

    # vessels: tubes branching through the lungs, the distractors
    for _ in range(int(rng.integers(10, 18))):
        a = lung_point(False, 2.0)
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        b = a + d * rng.uniform(15, 45)
        radius = rng.uniform(0.5, 1.8)
        sl = region(np.minimum(a, b) - radius - 2, np.maximum(a, b) + radius + 2)
        dist = _segment_distance(local[sl], a.astype(np.float32), b.astype(np.float32)) - radius
        hu[sl] = np.maximum(hu[sl], -850 + _smooth_inside(dist, 0.4) * rng.uniform(850, 900))

    nodules: list[Finding] = []
    min_semi = min(lungs[0][1][:2].min(), 40.0)
    for _ in range(n_nodules):
        diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(min(30.0, 1.5 * min_semi)))))
        pleural = rng.random() < 0.3
        p = lung_point(pleural, diameter / 2)
        solid = rng.random() < 0.85
        level = rng.uniform(-60, 80) if solid else rng.uniform(-600, -350)
        draw_sphere(p, diameter, level)
        nodules.append(Finding(to_world(p), diameter))

    excluded: list[Finding] = []
    for _ in range(int(rng.integers(0, 3))):
        diameter = float(rng.uniform(1.5, 2.9))
        p = lung_point(False, diameter / 2)
        draw_sphere(p, diameter, 30.0)
        # the real file lists some findings with diameter -1 ("use 10 mm")
        excluded.append(Finding(to_world(p), -1.0 if rng.random() < 0.3 else diameter))

    hu = gaussian_filter(hu, sigma=0.6) + rng.normal(0, noise_hu, size=hu.shape).astype(np.float32)
    array = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    geometry = {"spacing": spacing, "origin": origin, "direction": direction}
    return array, geometry, nodules, excluded


def write_mhd(array_zyx: np.ndarray, geometry: dict, path: Path) -> None:
    """Write a MetaImage pair ``path`` (.mhd) + .raw (int16, little endian); both appear only once complete.

    Written directly rather than through ITK (whose first use costs ~10 s of lazy loading); tests read the
    files back with ITK. MetaImage stores the direction matrix column by column in ``TransformMatrix``.
    """
    if array_zyx.dtype != np.int16:
        raise ValueError(f"{path}: expected an int16 array, got {array_zyx.dtype}")
    nz, ny, nx = array_zyx.shape
    fmt = " ".join
    header = "\n".join(
        [
            "ObjectType = Image",
            "NDims = 3",
            "BinaryData = True",
            "BinaryDataByteOrderMSB = False",
            "CompressedData = False",
            f"TransformMatrix = {fmt(repr(float(v)) for v in np.asarray(geometry['direction']).T.ravel())}",
            f"Offset = {fmt(repr(float(v)) for v in geometry['origin'])}",
            "CenterOfRotation = 0 0 0",
            "AnatomicalOrientation = RAI",
            f"ElementSpacing = {fmt(repr(float(v)) for v in geometry['spacing'])}",
            f"DimSize = {nx} {ny} {nz}",
            "ElementType = MET_SHORT",
            f"ElementDataFile = {path.with_suffix('.raw').name}",
            "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw")
    tmp_raw, tmp_mhd = raw.with_name(f".{raw.name}.tmp"), path.with_name(f".{path.name}.tmp")
    np.ascontiguousarray(array_zyx).astype("<i2").tofile(tmp_raw)
    tmp_mhd.write_text(header)
    os.replace(tmp_raw, raw)
    os.replace(tmp_mhd, path)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def generate(
    out_dir: str | os.PathLike,
    n_scans: int = 60,
    size: tuple[int, int, int] = (96, 96, 48),
    n_subsets: int = 10,
    empty_fraction: float = 0.2,
    max_nodules: int = 3,
    seed: int = 0,
) -> Path:
    """Generate ``n_scans`` scans spread round-robin over ``subset0..subset{n_subsets-1}``; returns ``out_dir``.

    Every odd-numbered scan has an oblique direction (a few degrees about z and x), the others the identity.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    ann_rows: list[list] = []
    exc_rows: list[list] = []
    for i in range(n_scans):
        scan_rng = np.random.default_rng([seed, i])
        n_nodules = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_nodules + 1))
        array, geometry, nodules, excluded = make_scan(scan_rng, tuple(size), n_nodules, oblique=i % 2 == 1)
        uid = f"{UID_PREFIX}{seed:03d}{i:05d}"
        write_mhd(array, geometry, out / f"subset{i % n_subsets}" / f"{uid}.mhd")
        ann_rows += [[uid, *(f"{c:.6f}" for c in n.centre), f"{n.diameter:.6f}"] for n in nodules]
        exc_rows += [[uid, *(f"{c:.6f}" for c in n.centre), f"{n.diameter:.6f}"] for n in excluded]
    header = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    _write_csv(out / "annotations.csv", header, ann_rows)
    _write_csv(out / "annotations_excluded.csv", header, exc_rows)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--n_scans", type=int, default=60)
    p.add_argument("--size", type=int, nargs=3, default=[96, 96, 48], help="voxels x y z")
    p.add_argument("--n_subsets", type=int, default=10)
    p.add_argument("--empty_fraction", type=float, default=0.2)
    p.add_argument("--max_nodules", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = generate(a.out_dir, a.n_scans, tuple(a.size), a.n_subsets, a.empty_fraction, a.max_nodules, a.seed)
    print(f"wrote {a.n_scans} scans to {out}")


if __name__ == "__main__":
    main()
