"""Synthetic chest X-rays written in the REAL NIH ChestX-ray14 layout, so every step runs without the 45 GB release.

Layout written under ``out_dir`` (same names, header and column count as the release):
    images_001/images/00000001_000.png ...  images_002/images/...   8-bit grey PNG, ``{patient:08d}_{followup:03d}``
    Data_Entry_2017.csv   (the exact 11-field NIH header; ``Finding Labels`` with ``|`` and ``No Finding``)
    BBox_List_2017.csv    (NIH's header ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: one row per drawn lesion,
                          x, y = top-left corner, w, h in pixels of the written PNG, as NIH's boxes are in pixels of
                          its 1024 px PNGs; NIH spells Infiltration ``Infiltrate`` in this file, and so do we)
    train_val_list.txt, test_list.txt   (patient-disjoint official-style split)
    dicom/<name>.dcm      DICOM copies of some test images: 12-bit MONOCHROME2 with rescale slope/intercept and
                          a window, 12-bit MONOCHROME1, 16-bit plain (each decodes to the PNG's intensities), and
                          15-bit MONOCHROME1 with a full-range window wider than the picture (decodes to the PNG's
                          intensities under another linear window: 0.1 + 0.5 * png), 8-bit in part of its range
                          (0.05 + 0.85 * png) and 16-bit with a full-range window (0.3 + 0.4 * png), in turn.
Images are PA radiographs (patient's right on the image's left; MONOCHROME2) drawn as line integrals of density
through a film-like characteristic curve: body silhouette with neck, sloping shoulders, humeral heads, axillae and
chest wall; tapered lungs (the right larger, its dome higher) whose air is thin at the apices, edges and bases;
vascular trees branching from the hila (the left higher) and fading towards the periphery; mediastinum with the
trachea and main bronchi over a faint spine, aortic knob, pulmonary trunk, and a heart of right atrium and left
ventricle (cardiothoracic ratio 0.38-0.45 drawn); convex domes with sharp costophrenic angles, a gastric bubble
under the left one in most patients; S-shaped clavicles, curved posterior ribs with cortical margins (9-10 above
the right dome), fainter anterior ribs, scapular edges; breast shadows for women. Each film varies in tilt, shift,
magnification, axial rotation, inspiration depth, exposure, contrast, blur and quantum noise. Findings are drawn
where and as they appear (nodules < 3 cm and lobulated masses > 3 cm in a lung; effusion as dependent fluid with a
meniscus filling the costophrenic angle; cardiomegaly as the same heart widened to a ratio of 0.55-0.65;
pneumothorax as an apicolateral gap of air without markings behind a visceral pleural line; plate atelectasis;
patchy infiltrates; ill-defined pneumonia; dense consolidation with a fissural border and air bronchograms;
perihilar edema with Kerley B lines; emphysema as low flat domes, hyperlucency, pruned vessels and bullae; basal
peripheral reticular fibrosis; pleural thickening along the upper chest wall; a retrocardiac hiatal hernia with an
air-fluid level), strong enough to stay learnable at 96 px, with co-occurrence, imbalance, faint cases and
patients with several follow-ups that keep chronic findings. A seed gives the same labels, follow-ups and splits
as the earlier (cartoon) drawing: the pictures take their random numbers without changing the dataset's draws.

Boxes are written for the findings drawn as a bounded lesion: the 8 labels NIH boxes (Atelectasis, Cardiomegaly,
Effusion, Infiltrate, Mass, Nodule, Pneumonia, Pneumothorax) and Consolidation, Pleural_Thickening, Hernia; not for
Edema, Emphysema and Fibrosis, which are drawn over both lungs. A box is the bounding rectangle of the pixels where
the lesion changes the picture by at least ``BOX_LEVEL`` of its largest change (before blur and noise); several
nodules, or effusions on both sides, are one row each, as NIH lists several boxes of one finding.

CLI: python -m scripts.synthetic --out_dir /tmp/cxr14_synth --n_patients 200 --size 256
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import expit

from .labels import LABELS, findings_text

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
# per-image prevalence (imbalanced like NIH, but every label frequent enough to be measurable on a small test set)
PREVALENCE = {
    "Atelectasis": 0.11,
    "Cardiomegaly": 0.07,
    "Effusion": 0.13,
    "Infiltration": 0.16,
    "Mass": 0.08,
    "Nodule": 0.09,
    "Pneumonia": 0.05,
    "Pneumothorax": 0.08,
    "Consolidation": 0.07,
    "Edema": 0.06,
    "Emphysema": 0.06,
    "Fibrosis": 0.05,
    "Pleural_Thickening": 0.06,
    "Hernia": 0.04,
}
# finding -> (other finding, probability it co-occurs)
CO_OCCUR = {
    "Edema": [("Cardiomegaly", 0.5), ("Effusion", 0.5)],
    "Effusion": [("Atelectasis", 0.3)],
    "Mass": [("Nodule", 0.3)],
    "Pneumonia": [("Infiltration", 0.4)],
}
# the box file of the release (its bracketed column name is split by the commas, plus three empty columns)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_NAMES = {"Infiltration": "Infiltrate"}  # label names that BBox_List_2017.csv spells differently
BOX_LEVEL = 0.2
CHRONIC = {"Cardiomegaly", "Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening", "Nodule", "Mass"}


# ----------------------------------------------------------------------------------------------------- the drawing
# The picture is drawn as a sum of densities T (line integrals along the beam, in units of the soft tissue crossed
# through the middle of the chest: 1.0), passed through a film-like characteristic curve (MONOCHROME2: air dark,
# bone bright). Lengths are fractions of the image size: a 1024 px NIH PNG is a 2500-3000 px original of 0.143 mm
# pixels, ~36-43 cm, so 0.01 of the image is ~4 mm and the internal thorax (0.56-0.70) ~25-30 cm.
AIR = 0.6  # density that the air of a lung removes at full depth
_RIB_GROWTH = 0.02  # rib spacing grows downwards: rib k lies at pitch * (k + growth * k^2) below the first


def _smooth(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _soft(distance, px: float, width: float = 0.7):
    """0..1 membership from a signed distance (> 0 inside): a linear edge ~2.4 ``width`` pixels wide."""
    return np.clip(distance * (1.0 / (2.4 * width * px)) + 0.5, 0.0, 1.0)


class _Anatomy:
    """Per-patient anatomy and habitus (fractions of the image size), kept across follow-ups.

    The first draws are the ones this class has always taken from the dataset's generator (number, order and kind),
    so that a seed still gives the same patients, labels and splits; the rest comes from a generator seeded by them.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        legacy = [rng.normal(0, 0.015), rng.normal(0, 0.012), rng.normal(0, 0.02), rng.normal(0, 0.015)]
        legacy += [rng.normal(0, 0.01), rng.normal(0, 0.01), rng.uniform(0, 2 * np.pi), rng.normal(0, 0.03)]
        angles = rng.uniform(-1.2, 1.2, size=(2, 10))
        # (centre, lung width, height, centre row, offset) of the earlier drawing: their pixel counts set how many
        # random numbers a lesion's position takes (see legacy_counts)
        self._legacy = (0.5 + legacy[0], 0.19 + legacy[1], 0.30 + legacy[2], 0.45 + legacy[3], 0.2 + legacy[4])
        self._counts: dict[tuple[int, bool], tuple[int, int]] = {}
        words = np.array([*legacy, *angles.ravel()], dtype=np.float64).view(np.uint64)
        g = np.random.default_rng([int(w) for w in words])
        self.cx = self._legacy[0]  # midline of the thorax (the sternum)
        self.wt = float(np.clip(g.normal(0.315, 0.014), 0.28, 0.35))  # half the widest internal thoracic width
        self.wall = float(np.clip(g.normal(0.05, 0.012), 0.025, 0.085))  # chest wall soft tissue: habitus
        self.y_apex = float(g.normal(0.12, 0.012))
        self.y_dome = float(np.clip(g.normal(0.645, 0.02), 0.59, 0.7))  # top of the right dome
        self.dome_diff = float(g.normal(0.04, 0.024))  # the left dome is lower by this (~90% of people)
        self.dome_h = float(np.clip(g.normal(0.05, 0.008), 0.035, 0.07))  # dome height over its chord
        self.ctr = float(g.uniform(0.38, 0.45))  # cardiothoracic ratio of the normal heart
        self.ra_frac = float(g.uniform(0.30, 0.36))  # part of the heart's width right of the midline
        self.tilt = float(g.normal(0.6, 0.06))  # long axis of the left ventricle, radians below horizontal
        self.y_knob = self.y_apex + float(g.uniform(0.15, 0.18))
        self.d_knob = float(g.uniform(0.07, 0.09))
        self.y_carina = self.y_knob + float(g.uniform(0.06, 0.08))
        # the left hilum is higher than the right
        self.hila = (self.y_carina + float(g.uniform(0.045, 0.065)), self.y_carina + float(g.uniform(0.02, 0.04)))
        self.rib_top = self.y_apex + float(g.uniform(0.0, 0.012))
        q = float(g.uniform(9.0, 9.8))  # posterior rib at the top of the right dome (counted from 0)
        self.rib_pitch = (self.y_dome - self.rib_top) / (q + _RIB_GROWTH * q * q)
        self.rib_droop = float(g.uniform(0.09, 0.13))
        self.rib_rise = float(g.uniform(0.02, 0.035))
        y_sternal = self.y_apex + float(g.uniform(0.06, 0.085))
        self.clavicle = (y_sternal, y_sternal - float(g.uniform(0.05, 0.085)), self.wt + float(g.uniform(0.0, 0.04)))
        self.neck = float(g.uniform(0.075, 0.095))
        self.shoulder = self.wt + self.wall + float(g.uniform(0.07, 0.11))  # acromion, from the midline
        self.y_shoulder = self.y_apex + float(g.uniform(-0.01, 0.04))
        self.y_axilla = self.y_apex + float(g.uniform(0.12, 0.17))
        self.arm = float(g.uniform(0.08, 0.1))
        self.scapula = float(g.uniform(0.0, 0.05))
        bubble = float(g.uniform(0.035, 0.06))
        self.bubble = bubble if g.random() < 0.7 else 0.0  # gastric air under the left dome
        self.female = bool(g.random() < 0.5)  # breast shadows; generate() sets it from the patient's sex
        self.tree = _vessel_tree(self, g)
        self._seed = int(g.integers(2**62))
        self._fine: dict[int, np.ndarray] = {}

    def fine(self, n: int) -> np.ndarray:
        """Fine lung texture (overlapping small vessels below the tree's resolution), |smoothed noise|; cached."""
        if n not in self._fine:
            m = max(n // 6, 8)
            noise = np.random.default_rng(self._seed).normal(0, 1, (m, m))
            self._fine[n] = np.abs(ndimage.zoom(noise, n / m, order=1)[:n, :n]).astype(np.float32)
        return self._fine[n]

    def legacy_counts(self, n: int, emphysema: bool) -> tuple[int, int]:
        """Pixels of each lung as the earlier drawing made them: a lesion's position took ``integers(0, count)``."""
        key = (n, emphysema)
        if key not in self._counts:
            cx, lung_w, lung_h, lung_cy, lung_dx = self._legacy
            lung_h = lung_h * (1.12 if emphysema else 1.0)
            lung_cy = lung_cy + (0.035 if emphysema else 0.0)
            t = np.arange(n, dtype=np.float64) / n
            yy, xx = t[:, None], t[None, :]
            counts = []
            for side in (-1, 1):
                lung = _ellipse(yy, xx, lung_cy, cx + side * lung_dx, lung_h, lung_w) & (yy > lung_cy - lung_h * 0.95)
                counts.append(int(lung.sum()))
            self._counts[key] = (counts[0], counts[1])
        return self._counts[key]


class _View:
    """One exposure: positioning, inspiration, display, and the findings that change the anatomy (emphysema: ``es``
    in 0.4..1, cardiomegaly: the target ``ctr_big``). Side k = 0 is the image's left, the patient's right."""

    def __init__(self, a: _Anatomy, g: np.random.Generator | None, es: float = 0.0, ctr_big: float | None = None):
        self.a = a
        if g is None:  # the patient's own frame (vessel tree), domes a little low so that vessels reach behind them
            self.theta, self.zoom, self.shift, ins, self.rot, self.centre, self.width, self.seed = (
                0.0, 1.0, np.zeros(2), 0.06, 0.0, 0.6, 0.2, 0)  # fmt: skip
        else:
            self.theta = float(np.clip(g.normal(0, 0.02), -0.05, 0.05))  # in-plane tilt, radians
            self.zoom = float(np.clip(g.normal(1.0, 0.03), 0.93, 1.07))
            self.shift = np.clip(g.normal(0, 0.012, 2), -0.03, 0.03)
            ins = float(np.clip(g.normal(0, 0.012), -0.03, 0.03))  # inspiration depth: domes lower
            self.rot = float(np.clip(g.normal(0, 0.007), -0.018, 0.018))  # axial rotation: spine off the sternum
            self.centre = float(g.normal(0.64, 0.03))  # display: exposure and latitude
            self.width = float(0.23 * np.exp(g.normal(0, 0.08)))
            self.seed = int(g.integers(2**62))
        low = ins + (0.03 + 0.06 * es if es else 0.0)
        self.domes = (a.y_dome + low, a.y_dome + a.dome_diff + low)
        self.dome_h = a.dome_h * (1 - 0.75 * es)
        self.air = AIR * (1 + 0.3 * es)
        self.es = es
        self.mid, self.med = a.cx, a.cx + self.rot
        self.hearts = self._heart(1 - 0.12 * es, ctr_big)

    def display(self, T):
        return 0.015 + 0.955 * expit((T - self.centre) / self.width)

    def dlat(self, Y):
        """Lateral border of the thoracic cavity (inner margin of the ribs), distance from the midline."""
        a = self.a
        u = np.clip((Y - a.y_apex) / (a.y_dome + 0.03 - a.y_apex), 0, 1)
        return a.wt * (0.5 + 0.5 * np.sqrt(1 - (1 - u) ** 2))

    def dome(self, k: int, d):
        """Row of the diaphragm at lateral distance ``d``: convex upwards, steep into the costophrenic angle."""
        wt = self.a.wt
        lateral = np.clip((d - 0.78 * wt) / (0.22 * wt), 0, None) ** 2
        return self.domes[k] + self.dome_h * ((d - 0.5 * wt) / (0.55 * wt)) ** 2 + 0.035 * lateral

    def medial(self, k: int, Y):
        """Mediastinal border above the heart: right paratracheal stripe/SVC; left aortic knob, pulmonary trunk."""
        a = self.a
        if k == 0:
            return 0.042 + 0.014 * np.exp(-(((Y - a.y_carina + 0.02) / 0.06) ** 2))
        knob = (a.d_knob - 0.045) * np.exp(-(((Y - a.y_knob) / 0.03) ** 2))
        trunk = 0.02 * np.exp(-(((Y - a.y_knob - 0.075) / 0.03) ** 2))  # pulmonary trunk
        return 0.04 + 0.01 * _smooth((Y - a.y_apex) / 0.1) + knob + trunk

    def lung_sdf(self, k: int, X, Y, dlat=None):
        """Approximate signed distance to the outline of lung k (> 0 inside) and its four parts: lateral, medial,
        diaphragmatic and apical. ``dlat``: ``self.dlat(Y)`` if known."""
        s = 2 * k - 1
        d = s * (X - self.mid)
        c1 = (self.dlat(Y) if dlat is None else dlat) - d
        c2 = s * (X - self.med) - self.medial(k, Y)
        c3 = self.dome(k, d) - Y
        c4 = Y - (self.a.y_apex + 0.45 * ((d - 0.5 * self.a.wt) / self.a.wt) ** 2)
        return np.minimum(np.minimum(c1, c2), np.minimum(c3, c4)), (c1, c2, c3, c4)

    def _heart(self, scale: float, ctr_big: float | None) -> list[tuple[float, float, float, float, float]]:
        """Ellipses (x, y, semi-axis along, across, angle) of the cardiac silhouette: left ventricle (left border,
        apex on the left dome), right atrium (right border), and the base towards the mediastinum. Cardiomegaly
        scales ventricle and atrium about inner points, so the big heart holds the normal one."""
        a = self.a
        width = a.ctr * 2 * a.wt * scale
        right = a.ra_frac * width
        al, bl, phi = 0.6 * width, 0.36 * width, a.tilt
        ext = np.hypot(al * np.cos(phi), bl * np.sin(phi))
        ext_y = np.hypot(al * np.sin(phi), bl * np.cos(phi))
        lv = [self.med + width - right - ext, self.domes[1] - 0.085, al, bl, phi]
        rx, ry = 0.6 * right, 0.12
        ra = [self.med - right + rx, self.domes[0] - 0.045, rx, ry, 0.0]
        base = [self.med + 0.025, lv[1] - ext_y + 0.015, 0.055, 0.07, 0.0]
        if ctr_big is not None:
            lv_anchor = (lv[0] - 0.2 * al * np.cos(phi), lv[1] + 0.03)  # the apex moves out, not under the dome
            ra_anchor = (ra[0] + 0.4 * rx, ra[1] - 0.4 * ry)

            def width_at(f: float) -> float:  # the heart's transverse width with ventricle and atrium scaled by f
                lx, rax = lv_anchor[0] + f * (lv[0] - lv_anchor[0]), ra_anchor[0] + f * (ra[0] - ra_anchor[0])
                left = min(lx - f * ext, rax - f * rx, base[0] - base[2])
                return max(lx + f * ext, rax + f * rx, base[0] + base[2]) - left

            lo, hi = 1.0, 3.0  # bisection for the scale that gives the target ratio
            for _ in range(40):
                lo, hi = ((lo + hi) / 2, hi) if width_at((lo + hi) / 2) < ctr_big * 2 * a.wt else (lo, (lo + hi) / 2)
            f = (lo + hi) / 2
            for e, (ax, ay) in ((lv, lv_anchor), (ra, ra_anchor)):
                e[0], e[1], e[2], e[3] = ax + f * (e[0] - ax), ay + f * (e[1] - ay), e[2] * f, e[3] * f
        return [tuple(map(float, e)) for e in (lv, ra, base)]

    def heart_sdf(self, X, Y):
        out = None
        for x0, y0, al, bl, phi in self.hearts:
            c, s = float(np.cos(phi)), float(np.sin(phi))
            u = (X - x0) * c + (Y - y0) * s
            w = -(X - x0) * s + (Y - y0) * c
            e = (1 - np.sqrt((u / al) ** 2 + (w / bl) ** 2)) * min(al, bl)
            if out is None:
                out = e
            else:  # smooth union (polynomial smooth maximum): no creases where the chambers meet
                h = np.clip(0.5 + (e - out) / 0.024, 0, 1)
                out = out + (e - out) * h + 0.012 * h * (1 - h)
        return out

    def to_image(self, x, y):
        """Patient coordinates -> image coordinates (fractions), the inverse of the grid in _scene."""
        c, s = np.cos(self.theta), np.sin(self.theta)
        u, w = x + self.shift[0] - 0.5, y + self.shift[1] - 0.5
        return 0.5 + self.zoom * (c * u - s * w), 0.5 + self.zoom * (s * u + c * w)


def _window(v: _View, n: int, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
    """Image rows and columns that hold the patient-space box [x0, x1] x [y0, y1] (2 pixels margin)."""
    xs, ys = v.to_image(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
    r0, r1 = int(np.clip(np.floor(ys.min() * n) - 2, 0, n)), int(np.clip(np.ceil(ys.max() * n) + 3, 0, n))
    c0, c1 = int(np.clip(np.floor(xs.min() * n) - 2, 0, n)), int(np.clip(np.ceil(xs.max() * n) + 3, 0, n))
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def _vessel_tree(a: _Anatomy, g: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels as points (x, y, width, amplitude, lateral fraction) along a branching tree grown from each
    hilum in the patient's frame: wide at the hila, thinner and fainter outwards, few in the lateral third."""
    view = _View(a, None)
    step = 0.0012
    x0, y0, phi, length, width, side = [], [], [], [], [], []
    for k, s in ((0, -1), (1, 1)):
        # trunks leave the hilum along its height: upper lobe upwards, lower lobe (wider: gravity) downwards
        for angle in (-115, -95, -78, -60, -42, -25, -8, 10, 28, 45, 62, 78, 95, 115):
            along = np.sin(np.radians(angle))
            x0.append(a.cx + s * (0.085 + 0.012 * np.cos(np.radians(angle)) + g.normal(0, 0.004)))
            y0.append(a.hila[k] + 0.035 * along + g.normal(0, 0.005))
            phi.append(np.radians(angle + g.normal(0, 8)))
            length.append(g.uniform(0.03, 0.045))
            width.append(g.uniform(0.006, 0.009) * (1.15 if angle > 0 else 1.0))
            side.append(k)
    x0, y0, phi, length, width, side = map(np.array, (x0, y0, phi, length, width, side))
    segments = []
    ts = np.linspace(0, 1, 10)
    for _ in range(7):
        sign = 2 * side - 1
        xs = x0[:, None] + (sign * np.cos(phi) * length)[:, None] * ts
        ys = y0[:, None] + (np.sin(phi) * length)[:, None] * ts
        sdf = np.where(side[:, None] == 0, view.lung_sdf(0, xs, ys)[0], view.lung_sdf(1, xs, ys)[0])
        inside = sdf > 0.003
        inside[:, 0] = True
        whole = inside.all(axis=1)
        reach = np.where(whole, 1.0, ts[np.argmin(inside, axis=1)])
        segments.append(np.stack([x0, y0, xs[:, -1], ys[:, -1], reach, width], axis=1))
        grow = whole & (width > 0.0013)
        m = int(grow.sum())
        if not m:
            break
        turn = np.radians(g.uniform(10, 34, (2, m)) + g.normal(0, 6, (2, m)))
        x0 = np.tile(xs[grow, -1], 2)
        y0 = np.tile(ys[grow, -1], 2)
        phi = np.concatenate([phi[grow] - turn[0], phi[grow] + turn[1]])
        length = np.tile(length[grow], 2) * g.uniform(0.7, 0.85, 2 * m)
        width = np.tile(width[grow], 2) * g.uniform(0.66, 0.78, 2 * m)
        side = np.tile(side[grow], 2)
    seg = np.concatenate(segments)
    xa, ya, xb, yb, reach, w = seg.T
    xb, yb = xa + (xb - xa) * reach, ya + (yb - ya) * reach
    counts = np.maximum(np.ceil(np.hypot(xb - xa, yb - ya) / step).astype(int), 1)
    idx = np.repeat(np.arange(len(seg)), counts)
    frac = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 0.5) / counts[idx]
    x, y, w = xa[idx] + (xb - xa)[idx] * frac, ya[idx] + (yb - ya)[idx] * frac, w[idx]
    lateral = np.abs(x - a.cx) / view.dlat(y)  # 0 at the midline, 1 at the chest wall
    amp = (0.02 + 9.0 * w) * (1 - _smooth((lateral - 0.62) / 0.3))
    return np.stack([x, y, w, amp * step, lateral], axis=1)


def _vessels(v: _View, n: int) -> np.ndarray:
    """The vessel tree rasterised for this view (emphysema prunes the outer vessels)."""
    x, y, w, amp, lateral = v.a.tree.T
    xi, yi = v.to_image(x, y)
    amp = amp * (1 - 0.7 * v.es * _smooth((lateral - 0.35) / 0.4))
    ok = (xi >= 0) & (xi < 1) & (yi >= 0) & (yi < 1)
    flat = (np.floor(yi[ok] * n) * n + np.floor(xi[ok] * n)).astype(np.int64)
    layer = np.zeros((n, n), np.float32)
    for big, sigma in ((True, 0.0028), (False, 0.0013)):
        sel = (w[ok] >= 0.004) == big
        # a line of linear density lam blurred by sigma peaks at lam / (sigma sqrt(2 pi)): amp is the peak of a
        # vessel resolved by the pixels; below a pixel its density spreads (partial volume)
        sigma_px = sigma * n * v.zoom
        weights = amp[ok][sel] * n * v.zoom * sigma_px * np.sqrt(2 * np.pi)
        hits = np.bincount(flat[sel], weights=weights, minlength=n * n).reshape(n, n).astype(np.float32)
        layer += ndimage.gaussian_filter(hits, sigma_px) if sigma_px >= 0.5 else hits  # the acquisition blurs more
    return layer


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1.0


def _add_box(boxes: list | None, label: str, lesion: np.ndarray) -> None:
    """Append (label, x, y, w, h): the pixel rectangle around ``lesion`` (a mask, or a change of the picture whose
    pixels at least ``BOX_LEVEL`` of its largest magnitude count); x = column, y = row, as NIH's boxes."""
    if boxes is None:
        return
    change = np.abs(np.asarray(lesion, dtype=np.float64))
    inside = change >= BOX_LEVEL * change.max() if change.max() > 0 else change > 0
    rows, cols = np.nonzero(inside)
    if len(rows):
        y0, x0 = int(rows.min()), int(cols.min())
        boxes.append((label, float(x0), float(y0), float(cols.max() - x0 + 1), float(rows.max() - y0 + 1)))


def _fork(rng: np.random.Generator) -> np.random.Generator:
    """A generator seeded by ``rng``'s state, without advancing ``rng`` (the dataset's draws stay as they were)."""
    words: list[int] = []

    def collect(value) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                collect(value[key])
        elif isinstance(value, (int, np.integer)):
            words.append(int(value))
        elif isinstance(value, np.ndarray):
            words.extend(int(x) for x in value.ravel())

    collect(rng.bit_generator.state)
    return np.random.default_rng(np.random.SeedSequence(words))


def _sample(name: str, rng: np.random.Generator, counts: tuple[int, int], n: int) -> dict:
    """A finding's random numbers, taken from ``rng`` in the number and order the earlier drawing took them (so the
    labels drawn after a picture do not depend on how it is drawn). A position is a fraction ``u`` in [0, 1)."""
    p = {"s": rng.uniform(0.35, 1.0), "side": int(rng.integers(0, 2))}
    count = counts[p["side"]]

    def u() -> float:
        return float(rng.integers(0, count)) / count

    if name == "Nodule":
        p["nodules"] = [(u(), rng.uniform(0.012, 0.02)) for _ in range(int(rng.integers(1, 4)))]
    elif name == "Mass":
        p["u"], p["r"] = u(), rng.uniform(0.05, 0.08)
    elif name == "Effusion":
        p["both"] = not rng.random() < 0.6
    elif name == "Atelectasis":
        p["u"], p["angle"] = u(), rng.uniform(-0.4, 0.4)
    elif name == "Infiltration":
        p["field"] = rng.normal(0, 1, (n, n))
    elif name == "Pneumonia":
        p["u"] = u()
    elif name == "Consolidation":
        p["level"], p["dx"] = rng.uniform(0.2, 0.6), rng.normal(0, 0.03)
    elif name == "Fibrosis":
        p["lines"] = [(u(), rng.uniform(0, np.pi)) for _ in range(25)]
    elif name not in LABELS:
        raise ValueError(f"no drawing for {name}")
    return p


def render(
    findings: set[str],
    anatomy: _Anatomy,
    size: int,
    rng: np.random.Generator,
    boxes: list | None = None,
) -> np.ndarray:
    """One PA radiograph as float in [0, 1] (MONOCHROME2: air dark, bone bright).

    ``boxes``: a list that receives (label, x, y, w, h) per drawn lesion (see the module docstring).
    """
    return _acquire(_scene(findings, anatomy, size, rng, boxes)["picture"], rng)


def _acquire(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, exposure and contrast jitter, quantum noise (stronger where fewer photons arrive)."""
    img = ndimage.gaussian_filter(picture, sigma=0.8 * len(picture) / 256)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03)
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.0) * 0.03 + rng.normal(0, 0.02, img.shape) * 0.6
    return np.clip(img + noise * (0.5 + 0.8 * img), 0, 1)


def _scene(  # noqa: C901 - one anatomy, drawn in order
    findings: set[str],
    a: _Anatomy,
    n: int,
    rng: np.random.Generator,
    boxes: list | None = None,
    vessels: bool = True,
) -> dict:
    """The picture before blur and noise, with what it was drawn from (view, findings' parameters, lung and heart
    masks, the rib coordinate, the vessel term; ``_geometry`` adds the masks the tests measure). ``render`` is
    ``_acquire`` of this picture. ``vessels=False`` leaves out the vascular markings."""
    params = {name: _sample(name, rng, a.legacy_counts(n, "Emphysema" in findings), n) for name in sorted(findings)}
    es = 0.4 + 0.6 * (params["Emphysema"]["s"] - 0.35) / 0.65 if "Emphysema" in params else 0.0
    big = 0.55 + 0.1 * (params["Cardiomegaly"]["s"] - 0.35) / 0.65 if "Cardiomegaly" in params else None
    v = _View(a, _fork(rng), es, big)
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    yy, xx = t[:, None], t[None, :]
    c, s = np.float32(np.cos(v.theta)), np.float32(np.sin(v.theta))
    X = np.float32(0.5 - v.shift[0]) + (c * (xx - 0.5) + s * (yy - 0.5)) / np.float32(v.zoom)
    Y = np.float32(0.5 - v.shift[1]) + (-s * (xx - 0.5) + c * (yy - 0.5)) / np.float32(v.zoom)
    px = 1.0 / (n * v.zoom)  # one pixel in patient units
    D = X - v.mid
    Ad = np.abs(D)
    Ds = np.abs(X - v.med)

    # body: torso (chest wall, shoulders above the axillae, neck), arms and humeral heads
    dl = v.dlat(Y)
    up = _smooth((a.y_axilla - Y) / 0.09)
    bw = dl + a.wall * (1 + 0.6 * _smooth((Y - v.domes[1]) / 0.2)) + (a.shoulder - dl - a.wall) * up
    top = -0.03 + (a.y_shoulder + 0.03) * np.clip((Ad - a.neck) / (a.shoulder - a.neck), 0, 1) ** 0.7  # trapezius
    torso = _soft(bw - Ad, px, 1.5) * _soft(Y - top, px, 1.5)
    ap = 0.5 + 0.42 * _smooth((Y - a.y_apex + 0.02) / 0.18) + 0.04 * _smooth((Y - v.domes[0]) / 0.12)
    T = torso * np.sqrt(np.sqrt(np.clip(1 - (Ad / bw) ** 2, 0, 1))) * ap
    w = _window(v, n, -0.3, 1.3, a.y_shoulder - 0.02, a.y_shoulder + (0.62 - a.shoulder + a.arm) / 0.45)
    Yw, Aw = Y[w], Ad[w]
    arm_x = a.shoulder + 0.02 + 0.45 * np.clip(Yw - a.y_shoulder, 0, None)
    arm = _soft(a.arm - np.abs(Aw - arm_x), px, 1.5) * _soft(Yw - a.y_shoulder - 0.01, px, 3)
    T[w] = np.maximum(T[w], 0.6 * arm * np.sqrt(np.clip(1 - ((Aw - arm_x) / a.arm) ** 2, 0, 1)))
    head = np.clip(1 - ((Aw - a.shoulder + 0.012) / 0.045) ** 2 - ((Yw - a.y_shoulder - 0.05) / 0.045) ** 2, 0, 1)
    shaft = _soft(0.018 - np.abs(Aw - arm_x + 0.01), px) * (Yw > a.y_shoulder + 0.05)
    T[w] += 0.25 * np.sqrt(head) + 0.08 * shaft * arm
    if a.female:  # breast shadows over the lower zones
        for k, sgn in ((0, -1), (1, 1)):
            w = _window(v, n, -0.3, 1.3, v.domes[k] - 0.14, v.domes[k] + 0.12)
            q = ((X[w] - v.mid - sgn * 0.56 * a.wt) / 0.17) ** 2 + ((Y[w] - v.domes[k] + 0.01) / 0.12) ** 2
            T[w] += 0.1 * np.sqrt(np.clip(1 - q, 0, 1)) * _smooth((Y[w] - v.domes[k] + 0.1) / 0.08)

    # lungs: air at a depth that is thin at the apices, edges and over the domes; the heart displaces it
    heart_d = np.full((n, n), -1.0, np.float32)
    xs = [e[0] + sgn * (max(e[2], e[3]) + 0.02) for e in v.hearts for sgn in (-1, 1)]
    ys = [e[1] + sgn * (max(e[2], e[3]) + 0.02) for e in v.hearts for sgn in (-1, 1)]
    w = _window(v, n, min(xs), max(xs), min(ys), max(ys))
    heart_d[w] = v.heart_sdf(X[w], Y[w])
    heart = _soft(heart_d, px)
    sdf, parts, lung_soft, air = [], [], [], []
    for k in (0, 1):
        f, (c1, c2, c3, c4) = v.lung_sdf(k, X, Y, dl)
        soft = _soft(f, px)
        depth = (0.55 + 0.45 * _smooth(c4 / 0.09)) * (0.75 + 0.25 * _smooth(c1 / 0.04))
        depth = depth * (0.82 + 0.18 * _smooth(c3 / 0.06)) * (0.85 + 0.15 * _smooth(c2 / 0.04))
        sdf.append(f)
        parts.append((c1, c2, c3, c4))
        lung_soft.append(soft)
        air.append(soft * depth * (1 - 0.8 * heart))
    T = T - v.air * (air[0] + air[1])
    lung_any = np.clip(lung_soft[0] + lung_soft[1], 0, 1)

    # bones: posterior ribs (curved bands, cortical margins, sloping down laterally), fainter anterior ribs,
    # clavicles, spine (bodies, discs, pedicles), scapular edges
    w = _window(v, n, -0.3, 1.3, a.rib_top - 0.08, max(v.domes) + 0.2)
    Yw, Dw, dw = Y[w], Ds[w], dl[w]
    arc = 1 + 0.7 * (1 - _smooth((Yw - a.y_apex) / 0.3))  # the upper ribs are the most curved
    off = -a.rib_rise * np.sin(np.pi * np.clip(Dw / (0.9 * a.wt), 0, 1))
    off = off + a.rib_droop * (Dw / a.wt) ** 2 * np.sqrt(Dw / a.wt)
    off = (off + 0.05 * np.clip((Dw - 0.82 * a.wt) / (0.18 * a.wt), 0, None) ** 2) * arc
    yq = np.maximum((Yw - a.rib_top - off) / a.rib_pitch, -5.0)
    q = np.full((n, n), -1.0, np.float32)  # posterior rib coordinate: rib k (from 0) at q = k
    q[w] = qw = (np.sqrt(1 + 4 * _RIB_GROWTH * yq) - 1) / (2 * _RIB_GROWTH)
    k_rib = np.round(qw)
    tr = np.abs(qw - k_rib)
    band = _soft((0.24 - tr) * a.rib_pitch * (1 + 2 * _RIB_GROWTH * qw), px, 0.8)
    cortex = band * np.exp(-(((tr - 0.2) / 0.04) ** 2))
    reach = _soft(dw + 0.6 * a.wall - Dw, px, 1.5) * _soft(Dw - 0.03, px, 2) * ((k_rib >= 0) & (k_rib <= 11))
    below = _smooth((Yw - v.dome(0, Dw)) / 0.05)  # the lower ribs fade into the upper abdomen
    T[w] += reach * (0.06 * band + 0.05 * cortex) * (1 - 0.75 * below)
    lateral_y = a.rib_top + a.rib_droop + 0.05 + 0.012
    w = _window(v, n, -0.3, 1.3, lateral_y - 0.05, lateral_y + 0.2 + 10 * 1.1 * a.rib_pitch)
    Aw = Ad[w]
    ya = (Y[w] - lateral_y - 0.14 * np.clip((a.wt - Aw) / a.wt, 0, 1)) / (1.1 * a.rib_pitch)
    qa = (np.sqrt(1 + 4 * _RIB_GROWTH * np.maximum(ya, -5.0)) - 1) / (2 * _RIB_GROWTH)
    ka = np.round(qa)
    band_a = _soft((0.3 - np.abs(qa - ka)) * a.rib_pitch, px, 1.5)
    T[w] += 0.04 * band_a * _soft(dl[w] - Aw, px, 2) * _soft(Aw - 0.3 * a.wt, px, 6) * ((ka >= 0) & (ka <= 8))
    y_st, y_lat, d_lat_c = a.clavicle
    w = _window(v, n, v.mid - d_lat_c - 0.02, v.mid + d_lat_c + 0.02, y_lat - 0.05, y_st + 0.05)
    tc = (Ad[w] - 0.02) / (d_lat_c - 0.02)
    yc = y_st + (y_lat - y_st) * tc + 0.012 * np.sin(2 * np.pi * tc)
    half = 0.013 * (1.3 - 0.5 * np.clip(tc, 0, 1))
    dist = np.abs(Y[w] - yc)
    clav = _soft(half - dist, px) * _soft(tc, px / (d_lat_c - 0.02), 1) * _soft(1 - tc, px / (d_lat_c - 0.02), 2)
    T[w] += clav * (0.11 + 0.07 * np.exp(-(((dist - 0.8 * half) / (0.3 * half)) ** 2)))
    w = _window(v, n, v.med - 0.05, v.med + 0.05, -0.3, 1.3)
    Xw, Yw, Dw = X[w], Y[w], Ds[w]
    col_w = 0.025 + 0.01 * _smooth((Yw - 0.1) / 0.6)
    column = _soft(col_w - Dw, px, 2.5)
    qv = (Yw - a.rib_top + 0.01) / (1.05 * a.rib_pitch)
    tv = qv - np.round(qv)
    tp = qv - np.floor(qv) - 0.5
    pedicle = np.sqrt(((Dw - col_w + 0.009) / 0.007) ** 2 + (tp * 1.05 * a.rib_pitch / 0.011) ** 2)
    spinous = np.exp(-(((Xw - v.med + 0.5 * v.rot) / 0.006) ** 2) - ((tp - 0.15) * a.rib_pitch / 0.013) ** 2)
    T[w] += column * (0.075 - 0.035 * np.exp(-((tv / 0.1) ** 2)) + 0.05 * np.exp(-(((pedicle - 1) / 0.3) ** 2)))
    T[w] += 0.04 * spinous
    w = _window(v, n, -0.3, 1.3, a.y_apex - 0.02, a.y_apex + 0.33)
    scap = _soft(Ad[w] - a.wt * (0.74 + 0.45 * (Y[w] - a.y_apex)), px, 2) * _soft(a.y_apex + 0.3 - Y[w], px, 8)
    T[w] += a.scapula * scap * _soft(dl[w] + a.wall + 0.04 - Ad[w], px, 3) * _soft(Y[w] - a.y_apex, px, 6)

    # airway: trachea (a darker column over the spine, pushed right by the aortic knob) and main bronchi
    w = _window(v, n, v.med - 0.07, v.med + 0.07, -0.3, a.y_carina + 0.07)
    Xw, Yw = X[w], Y[w]
    x_tr = v.med - 0.006 * np.exp(-(((Yw - a.y_knob) / 0.04) ** 2))
    airway = _soft(0.018 - np.abs(Xw - x_tr), px, 1) * _soft(a.y_carina - Yw, px, 1)
    for ang, length in ((-0.44, 0.05), (0.79, 0.065)):  # right main bronchus steeper than the left
        dx, dy = float(np.sin(ang)), float(np.cos(ang))
        along = (Xw - v.med) * dx + (Yw - a.y_carina) * dy
        across = np.abs(-(Xw - v.med) * dy + (Yw - a.y_carina) * dx)
        airway = np.maximum(airway, _soft(0.013 - across, px) * _soft(along, px) * _soft(length - along, px, 3))
    T[w] -= 0.24 * airway

    # hila and vascular markings
    for k, sgn in ((0, -1), (1, 1)):
        hx = v.mid + sgn * 0.095
        w = _window(v, n, hx - 0.07, hx + 0.07, a.hila[k] - 0.14, a.hila[k] + 0.14)
        T[w] += 0.12 * np.exp(-(((X[w] - hx) / 0.022) ** 2) - ((Y[w] - a.hila[k]) / 0.045) ** 2)
    V = _vessels(v, n) * lung_any if vessels else np.zeros((n, n), np.float32)
    if vessels:  # fine overlapping markings below the tree's resolution (the patient's own)
        V = V + 0.018 * a.fine(n) * lung_any * (1 - _smooth((Ad / dl - 0.6) / 0.4))
    T = T + V

    # gastric bubble under the left dome, with a fluid level
    if a.bubble:
        bx = v.mid + 0.5 * a.wt
        by = v.dome(1, 0.5 * a.wt) + 0.014 + 0.5 * a.bubble
        w = _window(v, n, bx - 1.2 * a.bubble, bx + 1.2 * a.bubble, by - 0.7 * a.bubble, by + 0.7 * a.bubble)
        rho = np.sqrt(((X[w] - bx) / a.bubble) ** 2 + ((Y[w] - by) / (0.5 * a.bubble)) ** 2)
        T[w] -= 0.38 * _soft((1 - rho) * 0.5 * a.bubble, px) * _soft(by + 0.15 * a.bubble - Y[w], px)

    sc = {
        "view": v, "params": params, "X": X, "Y": Y, "yy": yy, "xx": xx, "px": px, "n": n,
        "sdf": sdf, "parts": parts, "lung_soft": lung_soft, "air": air, "heart_soft": heart, "V": V,
        "lung": [(f > 0) & (heart_d <= 0) for f in sdf], "heart": heart_d > 0, "rib": q, "drawn": {},
    }  # fmt: skip
    if "Cardiomegaly" in params:
        _add_box(boxes, "Cardiomegaly", sc["heart"])
    for name in sorted(findings):
        T = _draw(name, T, sc, params[name], boxes)
    sc["T"] = T
    sc["picture"] = v.display(T)
    return sc


def _geometry(sc: dict) -> dict:
    """Masks to measure a scene by: lung outlines (behind the heart too), the thorax inside the ribs, the
    costophrenic recesses, the mediastinum (heart included) and the region below the domes."""
    v, a, X, Y, sdf, parts = sc["view"], sc["view"].a, sc["X"], sc["Y"], sc["sdf"], sc["parts"]
    D = X - v.mid
    thorax = np.zeros(X.shape, bool)
    sub = np.zeros(X.shape, bool)
    cp = []
    for k, sgn in ((0, -1), (1, 1)):
        c1, _, c3, c4 = parts[k]
        thorax |= (c1 > 0) & (c3 > 0) & (c4 > 0) & (sgn * D > 0)
        dk = sgn * D
        sub |= (dk > 0.03) & (dk < 0.8 * a.wt) & (Y > v.dome(k, dk) + 0.02) & (Y < v.domes[k] + 0.2)
        cp.append((sdf[k] > 0) & (c1 < 0.03) & (c3 < 0.03))  # the costophrenic recess
    if a.bubble:  # not the gastric air
        by = v.dome(1, 0.5 * a.wt) + 0.014 + 0.5 * a.bubble
        sub &= np.sqrt(((D - 0.5 * a.wt) / a.bubble) ** 2 + ((Y - by) / (0.5 * a.bubble)) ** 2) > 1.5
    mediastinum = (sc["heart"] | (thorax & (sdf[0] <= 0) & (sdf[1] <= 0))) & (Y > a.y_apex + 0.06)
    mediastinum &= Y < min(v.domes) - 0.01
    return {"lung_shape": [f > 0 for f in sdf], "thorax": thorax, "cp": cp, "mediastinum": mediastinum,
            "subdiaphragm": sub}  # fmt: skip


def _pick(sc: dict, region: np.ndarray, u: float) -> tuple[float, float]:
    """The pixel at fraction ``u`` of ``region``'s pixels (row-major), as image (row, column) fractions."""
    flat = np.flatnonzero(region)
    if not len(flat):
        flat = np.flatnonzero(sc["lung"][0] | sc["lung"][1])
    i = int(flat[min(int(u * len(flat)), len(flat) - 1)])
    n = sc["n"]
    return (i // n + 0.5) / n, (i % n + 0.5) / n


def _apply(T, delta, sc: dict, boxes: list | None, label: str | None, w=(slice(None), slice(None))):
    """T + delta (delta covers the window ``w`` of the image); the box is the change of the picture (before blur and
    noise) that delta makes."""
    new = T.copy()
    new[w] += delta
    if boxes is not None and label:
        display = sc["view"].display
        change = np.zeros(T.shape, np.float32)
        change[w] = display(new[w]) - display(T[w])
        _add_box(boxes, label, change)
    return new


def _draw(name: str, T, sc: dict, p: dict, boxes: list | None = None):  # noqa: C901 - one branch per finding
    """Add one finding to the densities ``T`` (returns a new array; ``sc`` is read only, except the note of what was
    drawn). The strength ``s`` is random so some cases are faint (AUROC stays below 1). Each bounded lesion adds its
    box to ``boxes``."""
    v, X, Y, yy, xx, px, n = sc["view"], sc["X"], sc["Y"], sc["yy"], sc["xx"], sc["px"], sc["n"]
    a = v.a
    s, k = p["s"], p["side"]
    sgn = 2 * k - 1
    g = np.random.default_rng([v.seed, LABELS.index(name)])
    lung_k, lung_b = sc["lung_soft"][k], sc["lung"][k]
    y_cp = v.dome(k, a.wt)  # row of the costophrenic angle
    height = y_cp - a.y_apex
    lung_box = (v.mid + min(sgn * (a.wt + 0.02), 0), v.mid + max(sgn * (a.wt + 0.02), 0))  # x range of lung k

    def around(cy, cx, r):
        """Image window around (cy, cx) +- r (image fractions) and its coordinates."""
        r0, r1 = int(max(np.floor((cy - r) * n) - 2, 0)), int(min(np.ceil((cy + r) * n) + 3, n))
        c0, c1 = int(max(np.floor((cx - r) * n) - 2, 0)), int(min(np.ceil((cx + r) * n) + 3, n))
        w = (slice(r0, max(r0, r1)), slice(c0, max(c0, c1)))
        return w, yy[w[0]] - cy, xx[:, w[1]] - cx

    def radial(dy, dx, r, lobes=0.0):
        """Distance over a lobulated radius."""
        ang = np.arctan2(dy, dx)
        wobble = 1 + lobes * (np.sin(3 * ang + g.uniform(0, 6.3)) + 0.6 * np.sin(5 * ang + g.uniform(0, 6.3)))
        return np.sqrt(dy**2 + dx**2) / (r * wobble)

    if name == "Nodule":  # round, sharply marginated, < 3 cm
        for u, r in p["nodules"]:
            cy, cx = _pick(sc, lung_b & (sc["sdf"][k] > r), u)
            w, dy, dx = around(cy, cx, 1.2 * r * v.zoom)
            rho = radial(dy, dx, r * v.zoom, 0.04)
            T = _apply(T, (0.15 + 0.3 * s) * np.sqrt(np.clip(1 - rho**2, 0, 1)), sc, boxes, name, w)
    elif name == "Mass":  # > 3 cm, lobulated
        r = p["r"]
        cy, cx = _pick(sc, lung_b & (sc["sdf"][k] > 0.5 * r), p["u"])
        w, dy, dx = around(cy, cx, 1.3 * r * v.zoom)
        rho = radial(dy, dx, r * v.zoom, 0.06)
        T = _apply(T, 0.5 * s * np.clip(1 - rho**2, 0, 1) ** 0.6, sc, boxes, name, w)
    elif name == "Effusion":  # dependent fluid: meniscus rising laterally, blunted costophrenic angle, dome lost
        sides = (0, 1) if p["both"] else (k,)
        rise_max = 0.09 + 0.15 * (s - 0.35) / 0.65
        for j in sides:
            sj = 2 * j - 1
            y0 = v.dome(j, a.wt) - rise_max - 0.06
            w = _window(v, n, v.mid + min(sj * (a.wt + 0.02), 0), v.mid + max(sj * (a.wt + 0.02), 0), y0, 1.2)
            dj = sj * (X[w] - v.mid)
            level = v.dome(j, a.wt) - rise_max * (0.35 + 0.65 * np.clip(dj / a.wt, 0, 1) ** 2)
            fluid = _smooth((Y[w] - level) / 0.02) * sc["lung_soft"][j][w]
            T = _apply(T, (v.air * sc["air"][j][w] * 0.95 + 0.06) * fluid, sc, boxes, name, w)
        sc["drawn"][name] = {"sides": sides}
    elif name == "Cardiomegaly":
        pass  # drawn as the wide heart in _scene (CTR > 0.55)
    elif name == "Pneumothorax":  # apicolateral air: a visceral pleural line, nothing but air lateral to it
        kf = 1 - (0.1 + 0.16 * (s - 0.35) / 0.65)
        ax, ay = v.med + sgn * 0.06, v.domes[k]
        w = _window(v, n, *lung_box, a.y_apex - 0.03, max(v.domes) + 0.12)
        Xw, Yw, lw = X[w], Y[w], lung_k[w]
        inner = v.lung_sdf(k, ax + (Xw - ax) / kf, ay + (Yw - ay) / kf)[0] * kf
        gap = lw * (1 - _soft(inner, px)) * (1 - sc["heart_soft"][w])
        line = np.exp(-((inner / (0.9 * px)) ** 2)) * lw
        delta = -(0.2 + 0.35 * v.air * sc["air"][k][w]) * gap - sc["V"][w] * gap + 0.12 * line
        T = _apply(T, delta, sc, boxes, name, w)
        gap_full, inner_full = np.zeros((n, n), bool), np.zeros((n, n), bool)
        gap_full[w], inner_full[w] = (gap >= 0.999) & (sc["sdf"][k][w] > 2 * px), inner > 2 * px
        sc["drawn"][name] = {"side": k, "gap": gap_full, "lung": inner_full}
    elif name == "Atelectasis":  # plate-like bands in the mid/lower zones
        cy, cx = _pick(sc, lung_b & (sc["sdf"][k] > 0.03) & (Y > a.y_apex + 0.4 * height), p["u"])
        half, thick = (0.06 + 0.04 * s) * v.zoom, (0.008 + 0.008 * s) * v.zoom
        w, dy, dx = around(cy, cx, half + 0.05)
        c, si = np.cos(p["angle"]), np.sin(p["angle"])
        along0, across0 = dx * c + dy * si, -dx * si + dy * c
        plate = 0
        for shift, scale in ((0.0, 1.0), (g.choice([-1, 1]) * g.uniform(0.02, 0.03), g.uniform(0.4, 0.7))):
            along, across = along0 - g.uniform(-0.2, 0.2) * half * (shift != 0), across0 - shift * v.zoom
            lens = np.sqrt(np.clip(1 - (along / (half * scale)) ** 2, 0, 1))
            plate = np.maximum(plate, lens * _soft(thick * scale * (0.3 + 0.7 * lens) - np.abs(across), px, 1.2))
        T = _apply(T, 0.32 * s * plate * lung_k[w], sc, boxes, name, w)
    elif name == "Infiltration":  # patchy ill-defined opacities in the mid and lower zones of one lung
        field = ndimage.gaussian_filter(p["field"], 3.0 * n / 256)
        patch = expit((field - np.quantile(field, 0.7)) / (0.25 * field.std()))
        region = lung_k * _smooth((Y - a.y_apex - 0.25 * height) / 0.08)
        infiltrate = ndimage.gaussian_filter((patch * region).astype(np.float32), 1.5 * n / 256)
        T = _apply(T, 0.2 * s * infiltrate, sc, boxes, name)
    elif name == "Pneumonia":  # airspace opacity with ill-defined margins, confined to the lung
        cy, cx = _pick(sc, lung_b & (sc["sdf"][k] > 0.02), p["u"])
        r = g.uniform(0.05, 0.075) * v.zoom
        w, dy, dx = around(cy, cx, 1.6 * r)
        blob = expit((1 - radial(dy, dx, r, 0.12)) * r / (0.012 * v.zoom))
        lw = lung_k[w]
        T = _apply(T, 0.3 * s * blob * lw * (0.6 + 0.4 * sc["air"][k][w] / (lw + 1e-6)), sc, boxes, name, w)
    elif name == "Consolidation":  # dense lobar opacity, flat fissural lower border, air bronchograms
        u1 = (p["level"] - 0.2) / 0.4
        cy = a.y_apex + (0.22 + 0.28 * (1 - u1)) * height
        cx = v.mid + sgn * 0.55 * v.dlat(cy) + sgn * p["dx"]
        w = _window(v, n, cx - 0.12, cx + 0.12, cy - 0.1, cy + 0.1)
        Xw, Yw = X[w] - cx, Y[w] - cy
        ang = np.arctan2(Yw, Xw)
        rho = np.sqrt((Xw / 0.095) ** 2 + (Yw / 0.075) ** 2) / (1 + 0.1 * np.sin(3 * ang + g.uniform(0, 6.3)))
        fissure = g.uniform(0.03, 0.05)
        region = _soft((1 - rho) * 0.075, px, 3) * _soft(fissure - Yw, px, 0.8) * lung_k[w] * (1 - sc["heart_soft"][w])
        tubes = 0
        for _ in range(3):
            t_ang = np.arctan2(cy - a.hila[k], (cx - v.mid - sgn * 0.1)) + g.normal(0, 0.35)
            along = (Xw + sgn * 0.05) * np.cos(t_ang) + Yw * np.sin(t_ang)
            across = np.abs(-(Xw + sgn * 0.05) * np.sin(t_ang) + Yw * np.cos(t_ang))
            width = 0.0035 * (1 - 0.5 * np.clip(along / 0.12, 0, 1))
            tubes = np.maximum(tubes, _soft(width - across, px) * _soft(along, px) * _soft(0.12 - along, px))
        dense = (v.air * sc["air"][k][w] * (0.6 + 0.35 * s) + 0.05) * region
        T = _apply(T, dense * (1 - 0.6 * tubes), sc, boxes, name, w)
    elif name == "Edema":  # bilateral perihilar (bat-wing) haze, Kerley B lines at the lateral bases
        T = T.copy()
        for j, sj in ((0, -1), (1, 1)):
            dj = sj * (X - v.mid)
            haze = np.exp(-(((Y - a.hila[j]) / 0.12) ** 2) - ((dj - 0.1) / 0.11) ** 2)
            T += (0.3 * haze + 0.05) * s * sc["lung_soft"][j]
            for m in range(5):
                yk = v.dome(j, a.wt) - 0.025 - 0.02 * m
                wall = v.dlat(yk)
                xs = sorted((v.mid + sj * (wall - 0.04), v.mid + sj * (wall + 0.005)))
                w = _window(v, n, xs[0], xs[1], yk - 0.006, yk + 0.006)
                djw = sj * (X[w] - v.mid)
                lines = _soft(0.0025 - np.abs(Y[w] - yk), px, 0.8) * _soft(djw - wall + 0.035, px) * (djw < wall)
                T[w] += 0.12 * s * lines * sc["lung_soft"][j][w]
    elif name == "Emphysema":  # hyperexpanded lucent lungs, low flat domes, pruned vessels: drawn in _scene
        if g.random() < 0.5:  # and sometimes an apical bulla
            cy = a.y_apex + g.uniform(0.08, 0.16)
            cx = v.mid + sgn * 0.55 * v.dlat(cy)
            r = g.uniform(0.035, 0.06)
            w = _window(v, n, cx - 1.2 * r, cx + 1.2 * r, cy - 1.2 * r, cy + 1.2 * r)
            rho = np.sqrt((X[w] - cx) ** 2 + (Y[w] - cy) ** 2) / r
            wall = np.exp(-((((rho - 1) * r) / (0.8 * px)) ** 2))
            T = T.copy()
            T[w] += (-0.1 * _soft((1 - rho) * r, px) - sc["V"][w] * (rho < 1) + 0.06 * wall) * lung_k[w]
    elif name == "Fibrosis":  # reticular opacities, basal and peripheral, both lungs
        region = np.zeros((n, n), bool)
        for j in (0, 1):
            c1, _, c3, _ = sc["parts"][j]
            region |= sc["lung"][j] & ((c1 < 0.07) | (c3 < 0.06)) & (Y > a.y_apex + 0.45 * height)
        net = np.zeros((n, n), np.float32)
        half_px, w_px = 0.03 * n * v.zoom, 0.0025 * n * v.zoom
        for u, ang in p["lines"]:
            cy, cx = _pick(sc, region, u)
            w, dy, dx = around(cy, cx, half_px / n)
            for turn in (0.0, np.pi / 2 + g.normal(0, 0.3)):
                along = (dx * np.cos(ang + turn) + dy * np.sin(ang + turn)) * n
                across = np.abs(-dx * np.sin(ang + turn) + dy * np.cos(ang + turn)) * n
                seg = _soft(w_px - across, 1.0, 0.6) * (np.abs(along) < half_px * (1 - 0.4 * (turn > 0)))
                net[w] = np.maximum(net[w], seg)
        small = region[::4, ::4].astype(np.float32)  # the basal haze, blurred at a quarter of the size
        haze = ndimage.zoom(ndimage.gaussian_filter(small, 0.02 * n / 4), n / len(small), order=1)[:n, :n]
        T = T + (0.3 * net + 0.2 * haze) * s * (sc["lung_soft"][0] + sc["lung_soft"][1])
    elif name == "Pleural_Thickening":  # smooth band along the upper chest wall and apex
        w = _window(v, n, *lung_box, a.y_apex - 0.03, a.y_apex + 0.5 * height + 0.03)
        c1, _, _, c4 = (part[w] for part in sc["parts"][k])
        thick = (0.01 + 0.02 * s) * (1 + 0.35 * np.sin(Y[w] * 40 + g.uniform(0, 6.3)))
        band = _soft(thick - np.minimum(c1, 0.8 * c4), px, 1) * lung_k[w]
        band = band * _soft(a.y_apex + 0.5 * height - Y[w], px, 4)
        T = _apply(T, (v.air * sc["air"][k][w] * 0.9 + 0.05) * band, sc, boxes, name, w)
    elif name == "Hernia":  # hiatal hernia: retrocardiac rounded opacity with an air-fluid level
        r = 0.05 + 0.025 * s
        cx, cy = v.med + 0.015, v.domes[1] - 0.045
        w = _window(v, n, cx - 1.3 * r, cx + 1.3 * r, cy - r, cy + r)
        rho = np.sqrt(((X[w] - cx) / (1.15 * r)) ** 2 + ((Y[w] - cy) / (0.9 * r)) ** 2)
        sac = _soft((1 - rho) * r, px, 1)
        gas = _soft((0.85 - rho) * r, px, 1) * _soft(cy - 0.15 * r - Y[w], px, 0.8)
        bulge = 0.35 * s * sac * (0.5 + 0.5 * sc["air"][1][w] / (sc["lung_soft"][1][w] + 1e-6))
        T = _apply(T, bulge - 0.5 * s * gas, sc, boxes, name, w)
    else:
        raise ValueError(f"no drawing for {name}")
    return T


def sample_findings(rng: np.random.Generator, keep: set[str] | None = None) -> set[str]:
    """Independent draws by prevalence, plus co-occurrence; ``keep`` are a patient's chronic findings."""
    found = {name for name, p in PREVALENCE.items() if rng.random() < p}
    if keep:
        found |= {name for name in sorted(keep) if rng.random() < 0.8}  # sorted: set order varies by hash seed
    for name in sorted(found):
        for other, p in CO_OCCUR.get(name, []):
            if rng.random() < p:
                found.add(other)
    return found


def write_dicom(
    image01: np.ndarray,
    path: str | os.PathLike,
    bits: int = 12,
    monochrome1: bool = False,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: bool = False,
    pixel_spacing: float = 0.143,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """A DX DICOM whose decoding (modality LUT, window, photometric) gives back ``image01`` up to quantisation.

    ``value_range`` (fractions of the stored range) places the picture in part of the stored values, as an
    acquisition whose full-range window is wider than the anatomy: decoding then gives ``first + (last - first) *
    image01``,
    the same picture under another linear window.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    max_stored = 2**bits - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    first, last = value_range
    stored = np.round((first + (last - first) * np.clip(image01, 0, 1)) * max_stored).astype(dtype)
    if monochrome1:
        stored = (max_stored - stored).astype(dtype)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = Path(path).stem.split("_")[0]
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8 * dtype().itemsize, bits, bits - 1, 0
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window:
        lo, hi = sorted((intercept, max_stored * slope + intercept))
        # the DICOM 'LINEAR' window that maps [lo, hi] exactly onto the full output range
        ds.WindowCenter, ds.WindowWidth = (lo + hi) / 2 + 0.5, hi - lo + 1
    ds.PixelData = stored.tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), write_like_original=False)
    return Path(path)


def generate(
    out_dir: str | os.PathLike, n_patients: int = 200, size: int = 256, seed: int = 0, n_dicom: int = 6
) -> Path:
    """Write the dataset; returns ``out_dir``. ~25% of patients form the official-style test list."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    rows, box_rows, test, train_val = [], [], [], []
    for pid in range(1, n_patients + 1):
        anatomy = _Anatomy(rng)
        n_images = int(rng.choice([1, 1, 2, 2, 3, 4]))
        chronic: set[str] | None = None
        in_test = rng.random() < 0.25
        age, gender = int(rng.integers(18, 90)), str(rng.choice(["M", "F"]))
        anatomy.female = gender == "F"  # breast shadows (takes no random numbers)
        for follow in range(n_images):
            findings = sample_findings(rng, chronic)
            chronic = findings & CHRONIC if chronic is None else chronic | (findings & CHRONIC)
            name = f"{pid:08d}_{follow:03d}.png"
            folder = out / f"images_{1 + (pid - 1) * 2 // n_patients:03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            boxes: list = []
            image = render(findings, anatomy, size, rng, boxes=boxes)
            box_rows += [[name, BBOX_NAMES.get(b[0], b[0]), *b[1:], "", "", ""] for b in boxes]
            Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(folder / name)
            view = "PA" if rng.random() < 0.7 else "AP"
            label = findings_text([int(n in findings) for n in LABELS])
            rows.append([name, label, follow, pid, age, gender, view, size, size, 0.143, 0.143])
            (test if in_test else train_val).append(name)
    with open(out / "Data_Entry_2017.csv", "w", newline="") as f:
        f.write(HEADER + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)
    with open(out / "BBox_List_2017.csv", "w", newline="") as f:
        f.write(BBOX_HEADER + "\n")
        csv.writer(f, lineterminator="\n").writerows(box_rows)
    (out / "test_list.txt").write_text("\n".join(test) + "\n")
    (out / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    write_dicom_copies(out, test[:n_dicom])
    return out


def write_dicom_copies(out: Path, names: list[str]) -> list[Path]:
    """DICOM versions of PNG images in the six encodings inference must handle (see module docstring), in turn."""
    from PIL import Image

    variants = [
        {"bits": 12, "slope": 2.0, "intercept": -1024.0, "window": True},
        {"bits": 12, "monochrome1": True},
        {"bits": 16},
        # a CR export: 15-bit MONOCHROME1 whose full-range window is wider than the picture, so it decodes to the
        # PNG under another linear window (the case that per-image percentile scaling makes harmless)
        {"bits": 15, "monochrome1": True, "window": True, "value_range": (0.1, 0.6)},
        # an 8-bit export in part of its range, and a 16-bit one whose full-range window is wider than the picture
        {"bits": 8, "value_range": (0.05, 0.9)},
        {"bits": 16, "window": True, "value_range": (0.3, 0.7)},
    ]
    written = []
    for i, name in enumerate(names):
        png = next(out.glob(f"images*/**/{name}"))
        image = np.asarray(Image.open(png), dtype=np.float64) / 255.0
        written.append(write_dicom(image, out / "dicom" / name.replace(".png", ".dcm"), **variants[i % len(variants)]))
    return written


def main(out_dir: str, n_patients: int = 200, size: int = 256, seed: int = 0, n_dicom: int = 6) -> None:
    """CLI: generate, then say what was written (the bare ``generate`` printed only its return value)."""
    out = generate(out_dir, n_patients=n_patients, size=size, seed=seed, n_dicom=n_dicom)
    n_images = sum(1 for _ in out.glob("images_*/images/*.png"))
    print(f"wrote {n_images} synthetic CXR14 images of {n_patients} patients ({size} px) to {out}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
