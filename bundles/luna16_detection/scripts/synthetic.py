"""Synthetic chest CT in the real LUNA16 on-disk layout, so every command of the bundle can be exercised without data.

Writes ``subset0..subset{n-1}/<seriesuid>.mhd/.raw`` (int16 HU, ITK/LPS physical space with a non-trivial
origin, anisotropic spacing and a slightly oblique direction), ``annotations.csv`` and
``annotations_excluded.csv`` with world-mm centres, exactly like the challenge files. Scenes are built in the
scanner's frame in mm and sampled at every voxel's physical position, so an annotation is the true nodule centre
whatever the scan geometry.

Content, a low-dose chest CT in miniature (the anatomy is scaled to the field of view; nodules, vessel calibres,
noise and blur are in true mm): air, a body with skin, subcutaneous fat and chest-wall muscle, ribs, sternum and a
vertebra with cortex and marrow, a mediastinum (fat, heart, aorta, vena cava, oesophagus, trachea), two lungs of
parenchyma denser at the back, a pulmonary artery and a vein tree per lung grown from the hilum to the periphery
(space colonisation, calibres by Murray's law: ~8 mm at the hilum of a 96-voxel scan, up to 14 mm in a full field
of view, 1.1-1.5 mm at the ends), bronchi beside the arteries from the trachea and main bronchi down a few
generations, nodules 3-30 mm (solid, part-solid, ground-glass; isolated, juxta-pleural or juxta-vascular; some
lobulated or spiculated), small excluded findings, scans without nodules, blur and low-dose noise. The vessels are
the detector's hard negatives: a vessel running through the slices looks like a nodule in each slice.
tests/test_luna16_twin.py measures all this on written scans.

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
from scipy.spatial import cKDTree

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001.9"  # LUNA16-like root; the suffix is made up

# CT numbers (HU, unenhanced, 120 kVp) of what is drawn. Standard tables (Kalender, Computed Tomography, 3rd ed.,
# 2011, fig. 1.5; Radiopaedia "Hounsfield unit"): air -1000, fat -120..-80, muscle +35..+55, blood +30..+45, CSF
# ~+15, cartilage ~+100..+200, spongy bone with marrow +200..+400, cortical bone > +1000; aerated lung -900..-750.
AIR, FAT, MUSCLE, BLOOD, CSF, CARTILAGE, MARROW, CORTEX = -1000.0, -100.0, 45.0, 40.0, 15.0, 120.0, 280.0, 1200.0
LUNG = (-945.0, -915.0)  # parenchyma between the resolved vessels, front of the lung (drawn per scan); the back is
# denser (supine); with the vessels, partial volume and blur the lung field measures ~ -850 (tests/test_luna16_twin.py)


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


def _ramp(dist: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction of a surface at ``dist`` (mm, negative inside) for a voxel ``width`` mm across."""
    return np.clip(0.5 - dist / width, 0.0, 1.0)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum of two distances (blend over ``k`` mm): union with rounded joins."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


class _Chest:
    """An axial chest in the scanner's frame (mm, x to the patient's left, y to the back, z to the head, 0 at the
    scan's centre), scaled to the field of view. The scan is a slab through the middle of the chest: trachea and
    carina in its upper part, hila near its middle, the heart below; lungs and body run past both ends.

    Every ``*_sdf`` takes broadcastable coordinate arrays (the open grid of the scan, or 1-D arrays of points) and
    returns an approximate signed distance in mm (negative inside)."""

    def __init__(self, rng: np.random.Generator, extent: np.ndarray) -> None:
        ex, ey, ez = (float(e) for e in extent)
        self.ez = ez
        self.bx = 0.46 * ex * rng.uniform(0.93, 1.0)  # body semi-axes: a chest is ~1.4 times wider than deep
        self.by = 0.34 * ey * rng.uniform(0.92, 1.0)
        self.yc = -0.05 * ey  # body centre a little anterior: the table lies behind the back
        self.b = 0.5 * (self.bx + self.by)  # mm per unit of the normalised radius
        self.fat = max(rng.uniform(0.04, 0.1), 3.0 / self.b)  # subcutaneous fat (varies), normalised, >= 3 mm
        bx, by = self.bx, self.by
        # mediastinum: a central band, the heart (an ellipsoid low in the slab, to the left), spine, aorta
        self.xm, self.wm = 0.02 * bx, 0.12 * bx
        self.heart_c = np.array([0.17 * bx, self.yc - 0.22 * by, -0.55 * ez * rng.uniform(0.9, 1.1)])
        self.heart_s = np.array([0.37 * bx, 0.52 * by, 0.62 * ez]) * rng.uniform(0.92, 1.05, size=3)
        self.rv = 0.12 * bx  # vertebral body radius (~38 mm wide in a 320 mm chest)
        self.yv = self.yc + 0.47 * by
        self.aorta = (0.14 * bx, self.yv - 0.55 * self.rv, 0.075 * bx)  # descending: left of the spine
        self.asc = (0.03 * bx, self.yc - 0.2 * by, 0.085 * bx)  # ascending aorta, above the heart
        self.svc = (-0.1 * bx, self.yc - 0.17 * by, 0.05 * bx)  # superior vena cava, right of it
        self.rt = 0.058 * bx  # trachea, outer radius (~19 mm in a 320 mm chest)
        self.ro = 0.04 * bx
        self.oes = (0.04 * bx, self.yv - self.rv - 1.1 * self.ro)
        self.trachea = (-0.01 * bx, self.oes[1] - self.ro - 1.05 * self.rt)
        self.carina_z = ez * rng.uniform(0.2, 0.3)
        self.pitch = ez * rng.uniform(0.11, 0.14)  # rib (and vertebra) pitch: ~10 ribs along the lungs
        self.rib_z0 = rng.uniform(0, self.pitch)

    # --- geometry ---------------------------------------------------------------------------------------------
    def _uv(self, x, y):
        u, v = x / self.bx, (y - self.yc) / self.by
        # round front, flatter back: exponent 2 in front, 3 behind
        rho = np.where(v > 0, (np.abs(u) ** 3 + np.abs(v) ** 3) ** (1 / 3), np.sqrt(u * u + v * v))
        return u, v, rho

    def _rho_cavity(self, v):
        """Normalised radius of the pleural surface: inside skin, fat, muscle (thicker at the back) and ribs."""
        return 0.985 - self.fat - (0.07 + 0.08 * np.clip(v, 0.0, 1.0)) - 0.06

    def _taper(self, z):
        """The thorax narrows a little towards both ends of the slab (apex, diaphragm)."""
        return np.sqrt(np.clip(1.0 - 0.18 * (z / (0.5 * self.ez + 1e-6)) ** 2, 0.3, 1.0))

    def cavity_sdf(self, x, y, z):
        _, v, rho = self._uv(x, y)
        return (rho - self._rho_cavity(v) * self._taper(z)) * self.b

    def mediastinum_sdf(self, x, y, z):
        band = np.abs(x - self.xm) - self.wm
        q = (np.stack(np.broadcast_arrays(x, y, z), axis=-1) - self.heart_c) / self.heart_s
        heart = (np.linalg.norm(q, axis=-1) - 1.0) * self.heart_s[:2].min() - 1.2  # with a rim of fat
        spine = np.sqrt(x**2 + (y - self.yv) ** 2) - 1.55 * self.rv
        behind = np.maximum(np.abs(x) - 1.55 * self.rv, self.yv - y)  # paravertebral muscles
        ax, ay, ar = self.aorta
        aorta = np.sqrt((x - ax) ** 2 + (y - ay) ** 2) - ar - 1.0
        return _smin(_smin(band, heart, 3.0), np.minimum(np.minimum(spine, behind), aorta), 3.0)

    def lung_sdf(self, x, y, z):
        return -_smin(-self.cavity_sdf(x, y, z), self.mediastinum_sdf(x, y, z), 2.0)

    def lung_half_width(self) -> float:
        return 0.5 * (self._rho_cavity(0.0) * self.bx - self.wm - abs(self.xm))

    # --- drawing ----------------------------------------------------------------------------------------------
    def render(self, rng, x, y, z):
        """HU of everything but the vessel trees, airways and findings."""
        nz, ny, nx = z.shape[0], y.shape[1], x.shape[2]
        u, v, rho = self._uv(x, y)  # 2-D [1, y, x]
        b = self.b
        hu = np.full((nz, ny, nx), AIR, np.float32)
        # patient table behind the back (a thin curved carbon-fibre shell)
        yt = self.yc + self.by + max(0.06 * self.by, 2.5) + 0.1 * self.by * (x / self.bx) ** 2  # under a mattress
        table = _smooth_inside(np.abs(y - yt - 0.9) - 0.9, 0.3) * (np.abs(x) < 1.2 * self.bx)
        rc = np.broadcast_to(self._rho_cavity(v), rho.shape)
        body = _smooth_inside((rho - 1.0) * b, 0.4)
        dermis = _smooth_inside((rho - 0.985) * b, 0.3)  # inside the skin: subcutaneous fat, then muscle
        muscle = _smooth_inside((rho - 0.985 + self.fat) * b, 0.4)
        layer = (AIR + (MUSCLE - AIR) * body) * (1 - dermis) + dermis * (FAT * (1 - muscle) + MUSCLE * muscle)
        layer = np.where(table > 0.01, AIR + table * (150.0 - AIR), layer)
        hu[:] = layer.astype(np.float32)

        # thoracic cavity (3-D: tapers), filled with mediastinal fat; the lungs replace it below
        cav = _smooth_inside(self.cavity_sdf(x, y, z), 0.4)
        hu += cav * (FAT - hu)
        # paravertebral muscles and the spine's soft tissue
        behind = _smooth_inside(np.maximum(np.abs(x) - 2.0 * self.rv, self.yv - 0.3 * self.rv - y), 0.5) * (rho < 1)
        hu += behind * (MUSCLE - hu)
        # mediastinal organs (unenhanced: heart, aorta, veins all blood ~ +40 HU)
        heart_c, heart_s = self.heart_c, self.heart_s
        q = np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip((x, y, z), heart_c, heart_s)))
        hu += _smooth_inside((q - 1.0) * heart_s[:2].min(), 0.5) * (BLOOD - hu)
        top = heart_c[2] + 0.6 * heart_s[2]
        tubes = ((self.aorta, -np.inf), (self.asc, top - 0.3 * self.ez), (self.svc, top - 0.2 * self.ez))
        for (cx, cy, r), lo in tubes:
            disc = _smooth_inside(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r, 0.4) * (z > lo)
            hu += disc * (BLOOD - hu)
        ox, oy = self.oes
        d_oes = np.sqrt((x - ox) ** 2 + (y - oy) ** 2)
        hu += _smooth_inside(d_oes - self.ro, 0.4) * (MUSCLE - hu)
        hu += _smooth_inside(d_oes - 0.25 * self.ro, 0.3) * (AIR - hu) * (rng.random() < 0.5)  # a little air

        # lungs: parenchyma denser towards the back (supine, gravity-dependent), a faint low-frequency texture
        lung_w = _smooth_inside(self.lung_sdf(x, y, z), 0.45).astype(np.float32)
        base = rng.uniform(*LUNG)
        dependent = rng.uniform(60.0, 100.0) * np.clip((y - (self.yc - self.by)) / (2 * self.by), 0, 1) ** 1.2
        texture = gaussian_filter(rng.normal(size=hu.shape).astype(np.float32), 2.0, truncate=2.0)
        texture *= 10.0 / max(float(texture.std()), 1e-6)
        hu += lung_w * (base + dependent + texture - hu)

        self._bones(hu, x, y, z, u, v, rho, rc)
        return hu

    def _bones(self, hu, x, y, z, u, v, rho, rc):
        """Ribs (sloping down towards the front, cartilage near the sternum), sternum, vertebrae with discs."""
        p = self.pitch
        zz = z[:, 0, 0]
        ring = (rho > rc - 0.01) & (rho < rc + 0.075)
        iy, ix = np.nonzero(ring[0])
        if len(iy):
            rho_k, rc_k = rho[0, iy, ix], rc[0, iy, ix]
            u2, v2 = np.broadcast_arrays(u, v)
            phi = np.arctan2(v2[0, iy, ix], u2[0, iy, ix])
            around = np.abs(np.angle(np.exp(1j * (phi - np.pi / 2)))) / np.pi  # 0 at the spine, 1 at the sternum
            zr = self.rib_z0 - 3.2 * p * around  # ribs run down towards the front, ~3 levels
            dz = np.mod(zz[:, None] - zr[None, :], p) - 0.5 * p
            radial = (rho_k - rc_k - 0.035) * self.b / max(0.03 * self.b, 0.9)
            e = radial[None, :] ** 2 + (dz / max(0.2 * p, 1.0)) ** 2
            w = np.clip((1.0 - e) * 4.0, 0.0, 1.0) * (around < 0.93)
            val = np.where(e < 0.35, MARROW, CORTEX)
            val = np.where(around[None, :] > 0.8, CARTILAGE, val)  # costal cartilage
            hu[:, iy, ix] += w * (val - hu[:, iy, ix])
        # sternum (front, midline)
        ys = self.yc - (self._rho_cavity(-1.0) + 0.035) * self.by
        s = np.sqrt((x / (0.09 * self.bx)) ** 2 + ((y - ys) / (0.035 * self.b + 0.8)) ** 2)
        hu += np.clip((1.0 - s) * 4.0, 0, 1) * (np.where(s < 0.6, MARROW, CORTEX) - hu)
        # vertebra: body (cortex and marrow), discs at the rib pitch, canal with cord, arch and processes
        rv, yv = self.rv, self.yv
        d_body = np.sqrt(x**2 + (y - yv) ** 2) - rv
        shell = max(0.15 * rv, 1.0)
        disc = np.abs(np.mod(z - self.rib_z0, p) - 0.5 * p) < 0.12 * p
        body_val = np.where(disc, 80.0, np.where(d_body > -shell, CORTEX, MARROW))
        hu += _smooth_inside(d_body, 0.3) * (body_val - hu)
        yk = yv + 1.45 * rv
        d_canal = np.sqrt(x**2 + (y - yk) ** 2)
        arch = (d_canal < 0.75 * rv) & (y > yv + 0.9 * rv)
        spinous = (np.abs(x) < 0.15 * rv) & (y > yk) & (y < yk + 1.4 * rv)
        transverse = (np.abs(y - yk + 0.1 * rv) < 0.2 * rv) & (np.abs(x) < 1.9 * rv)
        bone = (arch | spinous | transverse) & ~disc
        hu += bone * (0.5 * (MARROW + CORTEX) - hu)
        hu += _smooth_inside(d_canal - 0.45 * rv, 0.3) * (CSF - hu)


def _colonise(
    rng: np.random.Generator, roots: list[tuple[np.ndarray, np.ndarray]], attractors: np.ndarray, step: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grow trees by space colonisation (Runions et al. 2007): every attractor pulls its nearest node; a node with
    attractors grows one ``step`` along their mean direction; attractors closer than a kill distance are consumed.
    ``roots``: (start, hilum) pairs, the start does not grow. Returns node positions, parents (-1 at a start) and the
    index of the root each node belongs to."""
    pos = np.array([p for pair in roots for p in pair], float)
    parent = [j for k in range(len(roots)) for j in (-1, 2 * k)]
    owner = [k for k in range(len(roots)) for _ in range(2)]
    grows = np.array([i % 2 == 1 for i in range(len(pos))])
    attr = np.asarray(attractors, float)
    kill = 1.2 * step
    for _ in range(400):
        if not len(attr):
            break
        g = np.nonzero(grows)[0]
        d, j = cKDTree(pos[g]).query(attr)
        keep = d > kill
        attr, d, node = attr[keep], d[keep], g[j[keep]]
        if not len(attr):
            break
        vec = (attr - pos[node]) / d[:, None]
        sums = np.stack([np.bincount(node, vec[:, a], minlength=len(pos)) for a in range(3)], axis=1)
        grow = np.nonzero(np.bincount(node, minlength=len(pos)))[0]
        dirs = sums[grow]
        ok = np.linalg.norm(dirs, axis=1) > 1e-6
        grow, dirs = grow[ok], _unit(dirs[ok])
        dirs = _unit(dirs + rng.normal(scale=0.12, size=dirs.shape))  # a little tortuosity
        new = pos[grow] + step * dirs
        fresh = cKDTree(pos).query(new)[0] > 0.45 * step  # that way already taken
        if not fresh.any():
            break
        grow, new = grow[fresh], new[fresh]
        pos = np.vstack([pos, new])
        parent += grow.tolist()
        owner += [owner[i] for i in grow]
        grows = np.concatenate([grows, np.ones(len(new), bool)])
    return pos, np.array(parent), np.array(owner)


def _murray_radii(parent: np.ndarray, owner: np.ndarray, r_leaf: float, r_root: np.ndarray) -> np.ndarray:
    """Radius per node from the number of end branches it feeds: r = r_leaf * n ** (1 / gamma), gamma set per tree so
    that its hilum gets ``r_root`` (kept within Murray's 2..3.2; Murray 1926, measured ~2.3-3 in human pulmonary
    arteries, Huang et al., J Appl Physiol 1996)."""
    n = len(parent)
    children = np.bincount(parent[parent >= 0], minlength=n)
    count = (children == 0).astype(float)
    for i in range(n - 1, -1, -1):
        if parent[i] >= 0:
            count[parent[i]] += count[i]
    radii = np.empty(n)
    for k in np.unique(owner):
        mine = owner == k
        hilum = np.nonzero(mine & (parent >= 0))[0][0]
        total = max(count[hilum], 2.0)
        gamma = float(np.clip(np.log(total) / np.log(max(r_root[k] / r_leaf, 1.05)), 2.0, 3.2))
        radii[mine] = r_leaf * np.maximum(count[mine], 1.0) ** (1.0 / gamma)
        radii[mine & (parent < 0)] = radii[hilum]  # the mediastinal trunk
    return radii


def _skip_every_other(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segments to draw: every other node of an unbranched run is skipped (half the segments, the same course)."""
    n = len(parent)
    children = np.bincount(parent[parent >= 0], minlength=n)
    depth = np.zeros(n, int)
    for i in range(n):  # parents come before their children
        if parent[i] >= 0:
            depth[i] = depth[parent[i]] + 1
    skip = (children == 1) & (depth % 2 == 1) & (depth >= 2)
    above = parent.copy()
    above[skip[np.maximum(parent, 0)] & (parent >= 0)] = parent[parent[skip[np.maximum(parent, 0)] & (parent >= 0)]]
    keep = ~skip & (parent >= 0)
    return above[keep], np.nonzero(keep)[0]


class _Canvas:
    """The scan's grid in the scanner frame: draws tubes and blobs into boxes around them."""

    def __init__(self, size, spacing, extent):
        self.size, self.spacing, self.extent = np.array(size), np.asarray(spacing, float), np.asarray(extent, float)
        self.axes = [(self.spacing[a] * np.arange(size[a]) - self.extent[a] / 2).astype(np.float32) for a in range(3)]
        self.x = self.axes[0][None, None, :]
        self.y = self.axes[1][None, :, None]
        self.z = self.axes[2][:, None, None]

    def region(self, lo, hi):
        """Array slices [z, y, x] covering the box [lo, hi] (mm); None when it misses the scan."""
        a = np.floor((np.asarray(lo) + self.extent / 2) / self.spacing).astype(int).clip(0, self.size)
        b = (np.ceil((np.asarray(hi) + self.extent / 2) / self.spacing).astype(int) + 1).clip(0, self.size)
        if np.any(b <= a):
            return None
        return slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0])

    def coords(self, sl):
        ax, ay, az = self.axes
        return ax[sl[2]][None, None, :], ay[sl[1]][None, :, None], az[sl[0]][:, None, None]

    def tubes(self, layers, a, b, radii, width=0.8):
        """Capsules a[k]-b[k]; ``layers`` arrays get max(occupancy) of the radii in the matching column of ``radii``.
        Boxes are found for all capsules at once; the loop only evaluates each capsule in its box."""
        a, b = np.asarray(a, float).reshape(-1, 3), np.asarray(b, float).reshape(-1, 3)
        radii = np.asarray(radii, float).reshape(len(a), -1)
        reach = radii.max(axis=1)[:, None] + 1.2
        lo = np.floor((np.minimum(a, b) - reach + self.extent / 2) / self.spacing).astype(int).clip(0, self.size)
        hi = (np.ceil((np.maximum(a, b) + reach + self.extent / 2) / self.spacing).astype(int) + 1).clip(0, self.size)
        ab = b - a
        inv = 1.0 / np.maximum((ab * ab).sum(axis=1), 1e-9)
        ax, ay, az = self.axes
        half = 1.0 / width
        for k in np.nonzero(np.all(hi > lo, axis=1))[0]:
            (x0, y0, z0), (x1, y1, z1) = lo[k], hi[k]
            sl = slice(z0, z1), slice(y0, y1), slice(x0, x1)
            (abx, aby, abz), (pax, pay, paz) = ab[k], a[k]
            px = ax[x0:x1][None, None, :] - pax
            py = ay[y0:y1][None, :, None] - pay
            pz = az[z0:z1][:, None, None] - paz
            t = (px * (abx * inv[k]) + py * (aby * inv[k])) + pz * (abz * inv[k])
            np.clip(t, 0.0, 1.0, out=t)
            dist = np.sqrt((px - t * abx) ** 2 + (py - t * aby) ** 2 + (pz - t * abz) ** 2)
            for layer, rr in zip(layers, radii[k]):
                if rr > 0:  # partial volume: clip(0.5 - (dist - r) / width, 0, 1)
                    w = (0.5 + rr * half) - dist * half
                    np.clip(w, 0.0, 1.0, out=w)
                    np.maximum(layer[sl], w, out=layer[sl])


def _perpendicular(d: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Unit vectors perpendicular to the rows of ``d``, as close as possible to ``ref``."""
    p = ref - (d @ ref)[:, None] * d
    bad = np.linalg.norm(p, axis=1) < 0.2
    alt = np.array([0.0, 0.0, 1.0]) if abs(ref[2]) < 0.5 else np.array([0.0, 1.0, 0.0])
    p[bad] = alt - (d[bad] @ alt)[:, None] * d[bad]
    return _unit(p)


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
    extent = spacing * (np.array(size) - 1)
    # ITK: p = origin + D @ (spacing * index); the body's axes follow the scanner's, centred on the scan:
    # local = spacing * index - extent / 2, world = centre + D @ local
    centre = origin + direction @ (extent / 2)
    canvas = _Canvas(size, spacing, extent)
    x, y, z = canvas.x, canvas.y, canvas.z
    chest = _Chest(rng, extent)
    hu = chest.render(rng, x, y, z)
    ez = extent[2]

    def lung_sdf(p: np.ndarray) -> np.ndarray:
        return chest.lung_sdf(p[..., 0], p[..., 1], p[..., 2])

    def to_world(p_local: np.ndarray) -> np.ndarray:
        return centre + direction @ p_local

    # --- vessel trees: a pulmonary artery and a vein tree per lung ---------------------------------------------
    z_lo, z_hi = -0.5 * ez - 8.0, 0.5 * ez + 8.0
    lo = np.array([-chest.bx, chest.yc - chest.by, z_lo])
    hi = np.array([chest.bx, chest.yc + chest.by, z_hi])
    box_volume = float(np.prod(hi - lo))
    lung_fraction = 0.35
    spacing_attr = max(4.0, (lung_fraction * box_volume / 2 / 1200.0) ** (1 / 3))  # <= ~1200 per lung
    n_try = int(box_volume / spacing_attr**3)
    cand = lo + rng.random((n_try, 3)) * (hi - lo)
    cand = cand[lung_sdf(cand) < -0.5]
    step = max(2.0, 0.55 * spacing_attr)
    r_leaf = rng.uniform(0.55, 0.75)  # end branches ~1.1-1.5 mm across
    hilum_r = float(np.clip(0.12 * chest.bx, 1.5, 7.0))  # hilar arteries: ~10-15 mm in an adult chest
    xt, yt = chest.trachea

    def hilum(start: np.ndarray, toward: np.ndarray) -> np.ndarray:
        """Where a vessel from the mediastinum has entered the lung far enough to branch inside it."""
        t = np.linspace(0.0, 1.0, 200)[:, None]
        path = start + t * (toward - start)
        deep = np.nonzero(lung_sdf(path) < -0.6 * hilum_r)[0]
        return path[deep[0]] if len(deep) else toward

    roots = []
    for side in (-1, 1):
        xh = chest.xm + side * (chest.wm + 0.35 * chest.bx)
        zh = 0.05 * ez * (1.0 if side < 0 else 0.6)  # the left hilum a little lower
        trunk = np.array([chest.xm + side * 0.4 * chest.wm, chest.yc - 0.25 * chest.by, zh + 0.05 * ez])
        art = hilum(trunk, np.array([xh, yt + 0.1 * chest.by, zh]))
        atrium = np.array([chest.heart_c[0] - 0.3 * chest.wm, chest.yc + 0.05 * chest.by, zh - 0.27 * ez])
        vein = hilum(atrium, np.array([xh, yt - 0.15 * chest.by, zh - 0.22 * ez]))
        roots += [(trunk, art), (atrium, vein)]
    tree_nodes, tree_parent, tree_owner = [], [], []
    for s, side in enumerate((-1, 1)):
        mine = cand[(cand[:, 0] - chest.xm) * side > 0]
        pos, parent, owner = _colonise(rng, roots[2 * s : 2 * s + 2], mine, step)
        tree_parent.append(np.where(parent >= 0, parent + sum(len(n) for n in tree_nodes), -1))
        tree_owner.append(owner + 2 * s)
        tree_nodes.append(pos)
    nodes = np.concatenate(tree_nodes)
    parent = np.concatenate(tree_parent)
    owner = np.concatenate(tree_owner)
    r_root = np.array([hilum_r, 0.9 * hilum_r] * 2)
    radii = _murray_radii(parent, owner, r_leaf, r_root)
    above, child = _skip_every_other(parent)
    vessels = np.zeros(hu.shape, np.float32)
    canvas.tubes([vessels], nodes[above], nodes[child], radii[child, None])
    vessels *= np.maximum(_smooth_inside(chest.cavity_sdf(x, y, z), 0.4), 0.0)  # not into the chest wall
    hu += vessels * (BLOOD - hu)

    # --- airways: trachea, main bronchi, bronchi beside the arteries down to ~2 mm ----------------------------
    wall = np.zeros(hu.shape, np.float32)
    lumen = np.zeros(hu.shape, np.float32)
    carina = np.array([xt, yt, chest.carina_z])
    seg_a = [np.array([xt, yt, 0.5 * ez + 20.0])]
    seg_b = [carina]
    seg_r = [(chest.rt, 0.85 * chest.rt)]
    min_bronchus = max(1.1, 0.3 * hilum_r)
    for s, side in enumerate((-1, 1)):
        art = (owner == 2 * s) & (radii >= min_bronchus)
        idx = np.nonzero(art & (parent >= 0))[0]
        if not len(idx):  # a tiny field of view: no vessel wide enough to carry a bronchus
            continue
        d = _unit(nodes[idx] - nodes[parent[idx]])
        off = _perpendicular(d, _unit(np.array([side * 0.6, -1.0, 0.2])))
        outer = np.minimum(radii[idx], 0.72 * chest.rt)  # lobar bronchi no wider than the main bronchus
        bpos = nodes[idx] + off * (radii[idx] + outer + 0.3)[:, None]
        where = {int(i): k for k, i in enumerate(idx)}
        seg_a.append(carina)
        seg_b.append(bpos[0])
        seg_r.append((0.72 * chest.rt, 0.6 * chest.rt))
        for k, i in enumerate(idx[1:], start=1):
            p = int(parent[i])
            if p in where:
                seg_a.append(bpos[where[p]])
                seg_b.append(bpos[k])
                seg_r.append((outer[k], 0.7 * outer[k]))
    canvas.tubes([wall, lumen], seg_a, seg_b, seg_r, width=0.6)
    hu += wall * (MUSCLE - hu)
    hu += lumen * (AIR - hu)

    # --- nodules ----------------------------------------------------------------------------------------------
    vessel_tree = cKDTree(nodes)
    placed: list[tuple[np.ndarray, float]] = []

    def z_ok(p: np.ndarray, radius: float) -> np.ndarray:
        return np.abs(p[..., 2]) <= max(0.5 * ez - radius - 1.0, 0.0)

    def apart(p: np.ndarray, radius: float) -> np.ndarray:
        ok = np.ones(len(p), bool)
        for q, rq in placed:
            ok &= np.linalg.norm(p - q, axis=1) > radius + rq + 2.0
        return ok

    def free_of_vessels(p: np.ndarray, clearance: float) -> np.ndarray:
        near = vessel_tree.query_ball_point(p, r=clearance + 2 * hilum_r)
        ok = np.ones(len(p), bool)
        for k, ids in enumerate(near):
            if ids:
                ok[k] = np.all(np.linalg.norm(nodes[ids] - p[k], axis=1) > radii[ids] + clearance)
        return ok

    def sample(n: int) -> np.ndarray:
        return lo + rng.random((n, 3)) * (hi - lo)

    def place(kind: str, radius: float) -> np.ndarray:
        """Centre for a nodule: 'pleural' touches the chest wall, 'vascular' a vessel, else free in the lung."""
        if kind == "vascular":
            big = np.nonzero((parent >= 0) & (radii >= 0.6) & (radii <= 2.5))[0]
            if len(big):
                i = big[rng.integers(len(big), size=64)]
                t = rng.uniform(0.2, 0.8, size=(64, 1))
                axis = nodes[parent[i]] + t * (nodes[i] - nodes[parent[i]])
                off = _perpendicular(_unit(nodes[i] - nodes[parent[i]]), _unit(rng.normal(size=3)))
                p = axis + off * (radii[i] + 0.85 * radius)[:, None]
                ok = (lung_sdf(p) < -(radius + 1.0)) & z_ok(p, radius) & apart(p, radius)
                if ok.any():
                    return p[np.argmax(ok)]
        if kind == "pleural":
            p = sample(4000)
            depth = -chest.cavity_sdf(p[:, 0], p[:, 1], p[:, 2])  # below the costal pleura, clear of the mediastinum
            clear = chest.mediastinum_sdf(p[:, 0], p[:, 1], p[:, 2]) > radius + 2.0
            ok = (np.abs(depth - 0.7 * radius) < 0.6) & clear & z_ok(p, radius) & apart(p, radius)
            if ok.any():
                return p[np.argmax(ok)]
        p = sample(4000)
        depth = -lung_sdf(p)
        ok = (depth > radius + 2.0) & z_ok(p, radius) & apart(p, radius)
        clear = ok.copy()
        if ok.any():
            first = np.nonzero(ok)[0][:40]
            clear[first] = free_of_vessels(p[first], 0.5 * radius)
            clear[np.nonzero(ok)[0][40:]] = False
            if clear.any():
                return p[np.argmax(clear)]
            return p[np.argmax(ok)]
        inside = z_ok(p, radius) & (depth > 0)  # a big nodule in a small lung: the deepest place
        pool = p[inside] if inside.any() else p
        deepest = pool[np.argmax(-lung_sdf(pool))].copy()
        deepest[2] = np.clip(deepest[2], -max(0.5 * ez - radius - 1.0, 0.0), max(0.5 * ez - radius - 1.0, 0.0))
        return deepest

    def draw_nodule(p: np.ndarray, radius: float, level: float, ground_glass: bool, lobes: int, spicules: int):
        reach = radius * (1.0 + (0.6 if spicules else 0.0))
        sl = canvas.region(p - reach - 1.5, p + reach + 1.5)
        if sl is None:
            return
        xs, ys, zs = canvas.coords(sl)
        dx, dy, dz = xs - p[0], ys - p[1], zs - p[2]
        dist = np.sqrt(dx * dx + dy * dy + dz * dz) - (0.88 if lobes else 1.0) * radius
        for _ in range(lobes):  # lobulated: bumps reaching the annotated radius
            rl = radius * rng.uniform(0.3, 0.45)
            c = _unit(rng.normal(size=3)) * (radius - rl)
            dist = np.minimum(dist, np.sqrt((dx - c[0]) ** 2 + (dy - c[1]) ** 2 + (dz - c[2]) ** 2) - rl)
        w = _smooth_inside(dist, 0.35)
        for _ in range(spicules):  # spiculated: thin strands into the lung
            e = _unit(rng.normal(size=3))
            a, b = e * 0.8 * radius, e * radius * rng.uniform(1.3, 1.6)
            ab = b - a
            t = np.clip(((dx - a[0]) * ab[0] + (dy - a[1]) * ab[1] + (dz - a[2]) * ab[2]) / float(ab @ ab), 0, 1)
            ds = np.sqrt((dx - a[0] - t * ab[0]) ** 2 + (dy - a[1] - t * ab[1]) ** 2 + (dz - a[2] - t * ab[2]) ** 2)
            w = np.maximum(w, _smooth_inside(ds - 0.45 * (1 - t) - 0.15, 0.25))
        blended = hu[sl] + w * (level - hu[sl])
        hu[sl] = np.maximum(hu[sl], blended) if ground_glass else blended  # vessels stay visible through GGO

    nodules: list[Finding] = []
    min_semi = min(chest.lung_half_width(), 40.0)
    for _ in range(n_nodules):
        diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(max(min(30.0, 1.6 * min_semi), 3.0)))))
        radius = diameter / 2
        kind = ("pleural", "vascular", "free")[int(rng.choice(3, p=[0.3, 0.3, 0.4]))]
        p = place(kind, radius)
        roll = rng.random()
        lobes = int(rng.integers(3, 7)) if diameter >= 6 and rng.random() < 0.35 else 0
        spicules = int(rng.integers(4, 9)) if diameter >= 8 and rng.random() < 0.2 else 0
        if diameter >= 5 and roll < 0.15:  # pure ground glass
            draw_nodule(p, radius, rng.uniform(-650, -350), True, lobes, 0)
        elif diameter >= 8 and roll < 0.25:  # part-solid: ground-glass halo around a solid core
            draw_nodule(p, radius, rng.uniform(-650, -400), True, lobes, 0)
            draw_nodule(p, radius * rng.uniform(0.3, 0.5), rng.uniform(-10, 60), False, 0, 0)
        else:  # solid
            draw_nodule(p, radius, rng.uniform(0, 90), False, lobes, spicules)
        placed.append((p, radius))
        nodules.append(Finding(to_world(p), diameter))

    excluded: list[Finding] = []
    for _ in range(int(rng.integers(0, 3))):
        diameter = float(rng.uniform(1.5, 2.9))
        p = place("free", diameter / 2)
        draw_nodule(p, diameter / 2, 30.0, False, 0, 0)
        placed.append((p, diameter / 2))
        # the real file lists some findings with diameter -1 ("use 10 mm")
        excluded.append(Finding(to_world(p), -1.0 if rng.random() < 0.3 else diameter))

    # scanner: slight blur (in-plane resolution, slice profile) and low-dose noise, a little correlated like
    # filtered back-projection noise; sigma noise_hu in uniform tissue
    noise = gaussian_filter(rng.normal(size=hu.shape).astype(np.float32), (0.3, 0.6, 0.6))
    noise *= noise_hu / max(float(noise.std()), 1e-6)
    hu = gaussian_filter(hu, sigma=0.6) + noise
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
