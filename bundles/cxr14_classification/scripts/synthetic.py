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
Images are chest-like (body, lung fields, mediastinum, heart, diaphragm, ribs, vessels, noise); findings are
drawn so most labels are learnable (nodule/mass = small/large blobs, effusion = basal opacity with a blunted
costophrenic angle, cardiomegaly = wide heart, pneumothorax = lucent rim without markings, ...), with
co-occurrence, imbalance, faint cases and patients with several follow-ups that keep chronic findings.

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


class _Anatomy:
    """Per-patient geometry (fractions of the image size), kept across follow-ups."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.cx = 0.5 + rng.normal(0, 0.015)
        self.lung_w = 0.19 + rng.normal(0, 0.012)
        self.lung_h = 0.30 + rng.normal(0, 0.02)
        self.lung_cy = 0.45 + rng.normal(0, 0.015)
        self.lung_dx = 0.2 + rng.normal(0, 0.01)
        self.heart_w = 0.13 + rng.normal(0, 0.01)
        self.rib_phase = rng.uniform(0, 2 * np.pi)
        self.body = 0.42 + rng.normal(0, 0.03)
        self.vessel_angles = rng.uniform(-1.2, 1.2, size=(2, 10))
        self._texture: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}

    def texture(self, n: int, lung_cy: float) -> tuple[np.ndarray, np.ndarray]:
        """Ribs (bright arcs) and vessel markings (lines fanning from each hilum); cached per patient."""
        key = (n, round(lung_cy, 4))
        if key not in self._texture:
            xs = np.arange(n) / n
            ribs = np.zeros((n, n))
            for k in range(9):
                curve = 0.16 + k * 0.075 + 0.06 * np.cos((xs - self.cx) * 5.0 + self.rib_phase * 0.1)
                rows = np.clip(np.round(curve * n).astype(int), 0, n - 1)
                ribs[rows, np.arange(n)] = 1.0
            ribs = np.clip(ndimage.gaussian_filter(ribs, 0.006 * n) * 0.006 * n * 2.5, 0, 1)
            markings = np.zeros((n, n))
            t = np.linspace(0, 0.3, 4 * n)
            for s_i, side in enumerate((-1, 1)):
                hx, hy = self.cx + side * 0.09, lung_cy - 0.02
                for ang in self.vessel_angles[s_i] + (0 if side > 0 else np.pi):
                    r = np.clip(np.round((hy + t * np.sin(ang)) * n).astype(int), 0, n - 1)
                    c = np.clip(np.round((hx + t * np.cos(ang)) * n).astype(int), 0, n - 1)
                    np.maximum.at(markings, (r, c), np.exp(-t / 0.18))
            markings = ndimage.gaussian_filter(markings, 0.003 * n) * 0.003 * n * 2.5
            self._texture[key] = (ribs, np.clip(markings, 0, 1.5))
        return self._texture[key]


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, soft: float = 0.35) -> np.ndarray:
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
    return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / soft * 4, -50, 50)))


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


def render(
    findings: set[str],
    anatomy: _Anatomy,
    size: int,
    rng: np.random.Generator,
    boxes: list | None = None,
) -> np.ndarray:
    """One radiograph as float in [0, 1] (MONOCHROME2: air dark, bone bright).

    ``boxes``: a list that receives (label, x, y, w, h) per drawn lesion (see the module docstring).
    """
    n = size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) / n
    a = anatomy
    emph = "Emphysema" in findings
    lung_h = a.lung_h * (1.12 if emph else 1.0)
    lung_cy = a.lung_cy + (0.035 if emph else 0.0)
    img = np.full((n, n), 0.04)
    img[_ellipse(yy, xx, 0.55, a.cx, 0.55, a.body)] = 0.42
    lungs = []
    for side in (-1, 1):
        lcx = a.cx + side * a.lung_dx
        lung = _ellipse(yy, xx, lung_cy, lcx, lung_h, a.lung_w)
        lung &= yy > lung_cy - lung_h * 0.95
        lungs.append(lung)
    lung_mask = lungs[0] | lungs[1]
    img[lung_mask] = 0.16 - (0.05 if emph else 0.0)
    ribs, markings = a.texture(n, lung_cy)
    img += lung_mask * (0.09 * ribs + 0.06 * np.clip(markings, 0, 1.5))
    # mediastinum/spine and heart
    img = np.maximum(img, 0.55 * (np.abs(xx - a.cx) < 0.055) * (yy > 0.08))
    heart_w = a.heart_w * (1.55 if "Cardiomegaly" in findings else 1.0)
    heart = _ellipse(yy, xx, lung_cy + 0.16, a.cx + 0.03, 0.13, heart_w)
    img[heart] = np.maximum(img[heart], 0.58)
    if "Cardiomegaly" in findings:
        _add_box(boxes, "Cardiomegaly", heart)
    # diaphragm: everything below the domes is soft tissue
    dome_y = lung_cy + lung_h * 0.85 + 0.03 * np.cos((xx - a.cx) * 12)
    img[(yy > dome_y) & _ellipse(yy, xx, 0.55, a.cx, 0.55, a.body)] = 0.5
    for name in sorted(findings):
        img = _draw(name, img, yy, xx, lungs, lung_cy, lung_h, a, rng, boxes)
    # acquisition: blur, exposure and contrast jitter, quantum noise
    img = ndimage.gaussian_filter(img, sigma=0.8 * n / 256)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03)
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.0) * 0.035 + rng.normal(0, 0.02, img.shape)
    return np.clip(img + noise, 0, 1)


def _draw(name, img, yy, xx, lungs, lung_cy, lung_h, a, rng, boxes=None):  # noqa: C901 - one branch per finding
    """Add one finding; the strength is random so some cases are faint (AUROC stays below 1). Each bounded lesion
    adds its box to ``boxes`` (no random numbers are drawn for it, so the pictures do not depend on ``boxes``)."""
    s = rng.uniform(0.35, 1.0)
    side = int(rng.integers(0, 2))
    lung = lungs[side]
    lcx = a.cx + (2 * side - 1) * a.lung_dx
    ys, xs = np.nonzero(lung)
    n = img.shape[0]

    def point_in_lung() -> tuple[float, float]:
        i = rng.integers(0, len(ys))
        return ys[i] / n, xs[i] / n

    if name == "Nodule":
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = point_in_lung()
            nodule = 0.3 * s * _blob(yy, xx, cy, cx, rng.uniform(0.012, 0.02))
            img = img + nodule
            _add_box(boxes, name, nodule)
    elif name == "Mass":
        cy, cx = point_in_lung()
        mass = 0.3 * s * _blob(yy, xx, cy, cx, rng.uniform(0.05, 0.08), soft=0.25)
        img = img + mass
        _add_box(boxes, name, mass)
    elif name == "Effusion":
        for k in (side,) if rng.random() < 0.6 else (0, 1):
            base = lung_cy + lung_h * 0.85
            k_cx = a.cx + (2 * k - 1) * a.lung_dx
            # meniscus: fluid rises laterally, blunting the costophrenic angle
            level = base - (0.05 + 0.08 * s) - 0.12 * np.clip(np.abs(xx - k_cx) / a.lung_w, 0, 1) ** 2
            region = lungs[k] & (yy > level)
            filled = np.where(region, np.maximum(img, 0.42 + 0.1 * s), img)
            _add_box(boxes, name, filled != img)  # not the lung mask below the diaphragm, which it does not change
            img = filled
    elif name == "Cardiomegaly":
        pass  # drawn as the wide heart in render()
    elif name == "Pneumothorax":
        # lung edge pulled in: lateral/apical rim that is dark and has no markings, with a thin pleural line
        d = np.sqrt(((yy - lung_cy) / lung_h) ** 2 + ((xx - lcx) / a.lung_w) ** 2)
        depth = 0.15 + 0.2 * s
        rim = lung & (d > 1 - depth) & (yy < lung_cy + 0.1)
        before = img
        img = np.where(rim, 0.05, img)
        line = lung & (np.abs(d - (1 - depth)) < 0.02) & (yy < lung_cy + 0.1)
        img = np.where(line, img + 0.12, img)
        _add_box(boxes, name, img != before)
    elif name == "Atelectasis":
        cy, cx = point_in_lung()
        ang = rng.uniform(-0.4, 0.4)
        along = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        across = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        plate = (np.abs(along) < 0.09) & (np.abs(across) < 0.008 + 0.006 * s)
        img = img + 0.25 * s * (plate & lung)
        _add_box(boxes, name, plate & lung)
    elif name == "Infiltration":
        patch = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 3.0 * n / 256)
        patch = (patch > np.quantile(patch, 0.7)) & lung & (yy > lung_cy - 0.1)
        infiltrate = 0.14 * s * ndimage.gaussian_filter(patch.astype(float), 1.5)
        img = img + infiltrate
        _add_box(boxes, name, infiltrate)
    elif name == "Pneumonia":
        cy, cx = point_in_lung()
        opacity = 0.2 * s * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.05**2)) * lung
        img = img + opacity
        _add_box(boxes, name, opacity)
    elif name == "Consolidation":
        cy = lung_cy - lung_h * rng.uniform(0.2, 0.6)
        region = lung & _ellipse(yy, xx, cy, lcx + rng.normal(0, 0.03), 0.07, 0.09)
        dense = np.where(region, np.maximum(img, 0.35 + 0.15 * s), img)
        _add_box(boxes, name, dense != img)
        img = dense
    elif name == "Edema":
        for k in (-1, 1):
            hx = a.cx + k * 0.1
            img = img + 0.16 * s * np.exp(-(((yy - lung_cy) / 0.12) ** 2 + ((xx - hx) / 0.09) ** 2))
        for k in (0, 1):  # Kerley B lines at the lateral bases
            k_cx = a.cx + (2 * k - 1) * (a.lung_dx + a.lung_w * 0.8)
            for j in range(4):
                y0 = lung_cy + lung_h * (0.4 + 0.08 * j)
                img = img + 0.12 * s * ((np.abs(yy - y0) < 0.004) & (np.abs(xx - k_cx) < 0.04) & lungs[k])
    elif name == "Emphysema":
        pass  # drawn as large hyperlucent lungs with low flat domes in render()
    elif name == "Fibrosis":
        net = np.zeros_like(img)
        for _ in range(25):
            cy, cx = point_in_lung()
            ang = rng.uniform(0, np.pi)
            along = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
            across = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
            net += (np.abs(along) < 0.04) & (np.abs(across) < 0.003)
        img = img + 0.15 * s * np.clip(net, 0, 1) * (lungs[0] | lungs[1])
    elif name == "Pleural_Thickening":
        d = np.sqrt(((yy - lung_cy) / lung_h) ** 2 + ((xx - lcx) / a.lung_w) ** 2)
        band = lung & (d > 0.9 - 0.05 * s) & (yy < lung_cy)
        img = np.where(band, img + 0.22 * s, img)
        _add_box(boxes, name, band)
    elif name == "Hernia":
        cy, cx = lung_cy + lung_h * 0.55, a.cx - 0.02
        bulge, bubble = 0.2 * s * _blob(yy, xx, cy, cx, 0.07), 0.25 * s * _blob(yy, xx, cy - 0.02, cx, 0.025)
        img = img + bulge
        img = img - bubble  # two steps, as before boxes were recorded, so the pictures stay byte-identical
        _add_box(boxes, name, bulge - bubble)
    else:
        raise ValueError(f"no drawing for {name}")
    return img


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
