"""Write predicted segmentations back in the input's space and the edition's label values.

MONAI's ``SaveImaged`` rebuilds the NIfTI header from the affine; here the first modality's own header is
copied (qform/sform codes, units, description), so the seg overlays the inputs in any viewer. Files are
written to a temporary name and renamed, so an interrupted run leaves no half-written segmentation.

The optional PNG overlay is for people: three orthogonal planes through the predicted tumour, oriented from the
affine (not from the array's axis order) and shown in the radiological convention, one fixed colour per region
whatever the edition's label values.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from common.files import atomic_path
from common.flags import as_bool
from scripts.brats import GLI2023, LEGACY, Convention, convention

# one colour per region name, the same for every edition (2018-2021: 1/2/4, 2023: 1/2/3)
REGION_COLOURS: dict[str, tuple[float, float, float]] = {
    "necrotic core": (0.90, 0.10, 0.10),  # red
    "oedema": (0.25, 0.65, 1.00),  # sky blue
    "enhancing tumour": (1.00, 0.85, 0.00),  # yellow
}
FILL_ALPHA = 0.4  # inside a region: 60 % image, 40 % region colour; its 1-pixel outline is the pure colour
PANEL_PX = 256  # the shortest side of a panel, in pixels, at least (unless the volume is very elongated)
MAX_PANEL_PX = 1024
DPI = 100


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


def region_values(conv: Convention) -> dict[str, int]:
    """Region name -> label value in ``conv``'s edition."""
    return {"necrotic core": conv.necrosis, "oedema": conv.edema, "enhancing tumour": conv.enhancing}


def convention_of_labels(labels: np.ndarray) -> Convention:
    """The edition family of a written label map: 3 only in 2023, 4 only in 2018-2021 (1 and 2 are shared)."""
    values = set(np.unique(labels).tolist())
    if {3, 4} <= values:
        raise ValueError("label map holds both 3 and 4: not a BraTS 2018-2021 nor a 2023 label map")
    return GLI2023 if 3 in values else LEGACY


def reorient_to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` permuted/flipped so that its axes run towards patient Right, Anterior, Superior (nibabel's
    ``io_orientation``, as ``as_closest_canonical``), with the affine of the reoriented array."""
    start = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(("R", "A", "S")))
    ras = nib.orientations.apply_orientation(volume, transform)
    return ras, affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)


@dataclass
class Panel:
    """One plane of the overlay: ``rgb`` (rows, cols, 3) floats in [0, 1], as written to the PNG."""

    name: str  # axial, coronal, sagittal
    rgb: np.ndarray
    left: str  # the patient direction on the image's left / right edge (R/L, or A/P for sagittal)
    right: str
    slice_index: int  # index of the plane along its normal in the RAS-reoriented volume


@dataclass
class Overlay:
    """What ``write_overlay`` draws, computed before any plotting (the tests check these arrays)."""

    panels: list[Panel]
    title: str
    subtitle: str
    legend: list[tuple[str, tuple[float, float, float]]]  # (text, colour), fixed order of REGION_COLOURS


def _window(background: np.ndarray) -> np.ndarray:
    """Grey levels in [0, 1]: 1st-99.5th percentile of the non-zero (brain) voxels; exact zeros (outside the
    skull-stripped brain, also after MONAI's ``NormalizeIntensityd(nonzero=True)``) stay black."""
    b = np.asarray(background, dtype=np.float64)
    inside = b != 0
    values = b[inside] if inside.any() else b.ravel()
    lo, hi = np.percentile(values, [1.0, 99.5]) if values.size else (0.0, 1.0)
    grey = np.clip((b - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(b)
    grey[~inside] = 0.0
    return grey


def _upsample(plane: np.ndarray, row_mm: float, col_mm: float, pixel_mm: float) -> np.ndarray:
    """Nearest-neighbour resampling of a 2D plane to square pixels of ``pixel_mm``."""
    rows = max(1, round(plane.shape[0] * row_mm / pixel_mm))
    cols = max(1, round(plane.shape[1] * col_mm / pixel_mm))
    r = np.minimum(((np.arange(rows) + 0.5) * pixel_mm / row_mm).astype(int), plane.shape[0] - 1)
    c = np.minimum(((np.arange(cols) + 0.5) * pixel_mm / col_mm).astype(int), plane.shape[1] - 1)
    return plane[np.ix_(r, c)]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the panel's edge is not an outline)."""
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _ml(volume: float) -> str:
    return f"{volume:.1f} mL" if volume >= 0.05 or volume == 0 else "< 0.1 mL"


def overlay_panels(
    background: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    conv: Convention | None = None,
    title: str = "",
) -> Overlay:
    """Axial, coronal and sagittal planes through the centre of mass of the predicted whole tumour (the volume
    centre when nothing is predicted), oriented from ``affine`` and shown in the radiological convention:
    axial and coronal with the patient's right on the image's left (anterior / superior up), sagittal with
    anterior on the left. ``background`` and ``labels`` are (x, y, z) arrays in the voxel order of the file
    whose affine is ``affine``; ``conv`` gives the label values (None: read them from the labels)."""
    background, labels = np.asarray(background), np.asarray(labels)
    if background.shape != labels.shape or background.ndim != 3:
        raise ValueError(f"background {background.shape} and labels {labels.shape} must be the same 3D shape")
    affine = np.asarray(affine, dtype=np.float64)
    conv = conv or convention_of_labels(labels)
    values = region_values(conv)
    unexpected = sorted(set(np.unique(labels).tolist()) - {0, *values.values()})
    if unexpected:
        raise ValueError(f"label values {unexpected} are not BraTS {conv.name} labels {sorted(values.values())}")

    # centre in the file's voxels, then in the reoriented volume
    tumour = labels > 0
    centre = np.argwhere(tumour).mean(axis=0) if tumour.any() else (np.array(labels.shape) - 1) / 2
    world = affine @ np.r_[centre, 1.0]
    grey, ras_affine = reorient_to_ras(_window(background), affine)
    ras_labels, _ = reorient_to_ras(labels, affine)
    ras_centre = (np.linalg.inv(ras_affine) @ world)[:3]
    cx, cy, cz = (int(np.clip(np.floor(v + 0.5), 0, n - 1)) for v, n in zip(ras_centre, grey.shape))
    sx, sy, sz = np.linalg.norm(ras_affine[:3, :3], axis=0)

    extents = np.array(grey.shape) * np.array([sx, sy, sz])
    pixel_mm = max(float(extents.min()) / PANEL_PX, float(extents.max()) / MAX_PANEL_PX)
    # (name, image plane, label plane, row spacing, column spacing, left, right, slice); see the docstring
    planes = [
        ("axial", grey[::-1, ::-1, cz].T, ras_labels[::-1, ::-1, cz].T, sy, sx, "R", "L", cz),
        ("coronal", grey[::-1, cy, ::-1].T, ras_labels[::-1, cy, ::-1].T, sz, sx, "R", "L", cy),
        ("sagittal", grey[cx, ::-1, ::-1].T, ras_labels[cx, ::-1, ::-1].T, sz, sy, "A", "P", cx),
    ]
    panels = []
    for name, image_plane, label_plane, row_mm, col_mm, left, right, index in planes:
        g = _upsample(image_plane, row_mm, col_mm, pixel_mm)
        lab = _upsample(label_plane, row_mm, col_mm, pixel_mm)
        rgb = np.repeat(g[..., None], 3, axis=2)
        for region, value in values.items():
            mask = lab == value
            colour = np.array(REGION_COLOURS[region])
            rgb[mask] = (1 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * colour
            rgb[_outline(mask)] = colour
        panels.append(Panel(name, rgb, left, right, int(index)))

    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    i, j, k = (int(np.floor(v + 0.5)) for v in centre)
    x, y, z = (float(v) for v in world[:3])
    if tumour.any():
        subtitle = (
            f"whole tumour {_ml(int(tumour.sum()) * voxel_ml)}; planes through its centre of mass, "
            f"voxel ({i}, {j}, {k}) = ({x:.1f}, {y:.1f}, {z:.1f}) mm (RAS)"
        )
    else:
        subtitle = f"no tumour predicted; planes through the volume centre, voxel ({i}, {j}, {k})"
    legend = [
        (f"{region} (label {value}): {_ml(int((labels == value).sum()) * voxel_ml)}", REGION_COLOURS[region])
        for region, value in values.items()
    ]
    return Overlay(panels, str(title), subtitle, legend)


# layout of the PNG, in pixels
MARGIN, GAP, TITLE_PX, CAPTION_PX, LEGEND_PX = 12, 12, 52, 24, 64


def panel_origins(overlay: Overlay) -> list[tuple[int, int]]:
    """(row, column) of each panel's top-left pixel in the written PNG."""
    origins, col = [], MARGIN
    for p in overlay.panels:
        origins.append((TITLE_PX + CAPTION_PX, col))
        col += p.rgb.shape[1] + GAP
    return origins


def write_overlay(
    background: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    output: str | Path,
    title: str = "",
    conv: Convention | None = None,
) -> Path:
    """PNG of ``overlay_panels``: the three planes side by side at their computed pixel size (no resampling by
    matplotlib, so ``panel_origins`` gives each panel's exact position), orientation letters in the corners,
    region legend below. Agg backend; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    overlay = overlay_panels(background, labels, affine, conv, title)
    origins = panel_origins(overlay)
    width = origins[-1][1] + overlay.panels[-1].rgb.shape[1] + MARGIN
    height = TITLE_PX + CAPTION_PX + max(p.rgb.shape[0] for p in overlay.panels) + LEGEND_PX
    canvas = np.ones((height, width, 3))
    for p, (r, c) in zip(overlay.panels, origins):
        canvas[r : r + p.rgb.shape[0], c : c + p.rgb.shape[1]] = p.rgb

    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.figimage(canvas, 0, 0, origin="upper", resize=False)

    def at(row: float, col: float) -> tuple[float, float]:  # canvas pixel -> figure fraction
        return col / width, 1 - row / height

    fig.text(*at(6, MARGIN), overlay.title, fontsize=12, fontweight="bold", va="top")
    fig.text(*at(28, MARGIN), overlay.subtitle, fontsize=9, va="top")
    for p, (r, c) in zip(overlay.panels, origins):
        h, w = p.rgb.shape[:2]
        fig.text(*at(r - 4, c), p.name, fontsize=10, va="bottom")
        for letter, col, ha in ((p.left, c + 5, "left"), (p.right, c + w - 5, "right")):
            fig.text(*at(r + 4, col), letter, color="white", fontsize=12, fontweight="bold", ha=ha, va="top")
    handles = [Patch(facecolor=colour, edgecolor=colour, label=text) for text, colour in overlay.legend]
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=at(height - 24, MARGIN - 6), ncol=3,
               fontsize=9, frameon=False, handlelength=1.2, columnspacing=1.5)  # fmt: skip
    fig.text(*at(height - 8, MARGIN), "radiological convention: the patient's right (R) is on the image's left "
             "in the axial and coronal planes; anterior (A) on the left in the sagittal plane",
             fontsize=8, color="0.3", va="bottom")  # fmt: skip
    output = Path(output)
    with atomic_path(output) as tmp:
        fig.savefig(str(tmp), format="png", dpi=DPI, metadata={"Title": f"{overlay.title} {overlay.subtitle}"})
    plt.close(fig)
    return output


class SaveBratsSegd(MapTransform):
    """Postprocessing step: a label map -> ``<output_dir>/<case>_seg.nii.gz`` (+ optional PNG overlay).

    Expects the (1, H, W, D) label map of ``scripts.brats.RegionsToLabelsd`` (the edition's values); the header
    and affine are those of the first image file (T1c, or the single 4-channel file). The overlay's background is
    the FLAIR channel; its legend gives the label values of the item's ``edition``, else of ``default_edition``
    (as ``RegionsToLabelsd``), else those the label map holds (3 only in 2023, 4 only in 2018-2021).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        image_key: str = "image",
        overlay: bool = False,
        default_edition: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.overlay = as_bool(overlay)  # `--overlay false` arrives as the string "false"
        self.default_edition = default_edition

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
                edition = d.get("edition")  # a list of one after collation
                edition = edition[0] if isinstance(edition, (list, tuple)) and len(edition) == 1 else edition
                edition = edition or self.default_edition
                conv = convention(str(edition)) if edition else None
                affine = nib.load(str(reference)).affine
                write_overlay(convert_to_numpy(image)[3], labels, affine, self.output_dir / f"{case}_overlay.png",
                              title=case, conv=conv)  # fmt: skip
        return d
