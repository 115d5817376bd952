"""Read chest X-rays from PNG/JPEG/DICOM into one intensity scale, for training, evaluation and inference alike.

Decoding: every image becomes float32 in [0, 1] where 0 is black (air) and 1 is white (bone). The configs then
scale each image between its own 1st and 99th intensity percentiles (MONAI ``ScaleIntensityRangePercentilesd``)
before the fixed mean/std, so a linear window or the bit depth of the export does not reach the network.
- PNG/JPEG: value / (2**bit_depth - 1) (8-bit: /255, 16-bit: /65535); RGB/palette converted to grey (ITU-R 601).
- DICOM: stored values -> Modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence) -> VOI LUT (Window
  Center/Width or a VOI LUT Sequence) when the file has one -> divided by the output range that the LUT step
  defines (window: the stored range after rescale, as pydicom's ``apply_voi_lut``; no VOI: the stored range
  given by BitsStored after rescale) -> MONOCHROME1 inverted (1 - x).
So the same picture stored as 8-bit PNG and as 12-bit DICOM (with or without rescale, window or MONOCHROME1)
decodes to the same array up to quantisation (< 1e-3).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.files import has_dicom_preamble

MIN_SIZE = 32  # smaller images cannot be chest X-rays (a 1-pixel PNG is a broken export)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
logger = logging.getLogger(__name__)


class CXRReadError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def is_dicom(path: str | os.PathLike) -> bool:
    """DICOM by suffix, or by the 'DICM' magic at byte 128 (files from PACS often have no suffix)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return False
    return has_dicom_preamble(path)


def read_cxr(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Image as float32 (rows, cols) in [0, 1] plus metadata (spacing in mm when the file has it)."""
    path = Path(path)
    if not path.is_file():
        raise CXRReadError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise CXRReadError(f"{path}: empty file (0 bytes)")
    image, meta = _read_dicom(path) if is_dicom(path) else _read_pil(path)
    if image.ndim != 2 or min(image.shape) < MIN_SIZE:
        raise CXRReadError(f"{path}: image of shape {image.shape} is too small (need at least {MIN_SIZE}x{MIN_SIZE})")
    if not np.isfinite(image).all():
        raise CXRReadError(f"{path}: image contains NaN or infinite values")
    meta["filename_or_obj"] = str(path)
    return np.clip(image, 0.0, 1.0).astype(np.float32), meta


def _read_pil(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grey PNG (Pillow reports "I" for it in some versions)
                arr = np.asarray(im, dtype=np.float64)
                max_value = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") or mode == "I" else 255.0
                bits = 16
            elif mode in ("L", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.float64)
                max_value, bits = 255.0, 8
            elif mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "PA"):
                arr = np.asarray(im.convert("RGB").convert("L"), dtype=np.float64)
                max_value, bits = 255.0, 8
            else:
                raise CXRReadError(f"{path}: unsupported image mode {mode!r} (expected 8/16-bit grey or RGB)")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise CXRReadError(f"{path}: cannot be read as an image ({e})") from e
    return arr / max_value, {"bits": bits, "source_format": path.suffix.lower().lstrip(".") or "image"}


def _read_dicom(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise CXRReadError(f"{path}: cannot be read as DICOM ({e})") from e
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CXRReadError(f"{path}: DICOM file has no pixel data (a structured report or presentation state?)")
    try:
        stored = ds.pixel_array
    except Exception as e:  # missing decoder plugins, truncated pixel data, inconsistent tags
        raise CXRReadError(_decode_error(path, ds, e)) from e
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise CXRReadError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not a single radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        from pydicom.pixel_data_handlers.util import convert_color_space

        if photometric.startswith("YBR"):
            stored = convert_color_space(stored, photometric, "RGB")
        rgb = stored.astype(np.float64)
        grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        return grey / (2 ** int(ds.BitsStored) - 1), _dicom_meta(ds, photometric, path)
    low, high = _stored_range(ds)
    values = apply_modality_lut(stored, ds).astype(np.float64)
    if "ModalityLUTSequence" in ds:
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    else:
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    if "VOILUTSequence" in ds:
        # a LUT is indexed by integer input values (pydicom mis-indexes float arrays)
        values = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0).astype(np.float64)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        # pydicom maps the window onto [low, high], the same range computed above
        values = apply_voi_lut(values, ds, index=0)
    if high <= low:
        raise CXRReadError(f"{path}: DICOM intensity range is empty ({low}..{high})")
    image = (values - low) / (high - low)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    elif photometric != "MONOCHROME2":
        raise CXRReadError(f"{path}: unsupported PhotometricInterpretation {photometric!r}")
    return image, _dicom_meta(ds, photometric, path)


# compressed transfer syntaxes -> (modules that decode them for pydicom 2.4, pip packages that provide them)
_LIBJPEG = (("pylibjpeg", "libjpeg"), "pylibjpeg pylibjpeg-libjpeg")
_OPENJPEG = (("pylibjpeg", "openjpeg"), "pylibjpeg pylibjpeg-openjpeg")
DECODERS = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _LIBJPEG,  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless, first-order prediction (Process 14, SV1)
    "1.2.840.10008.1.2.4.80": _LIBJPEG,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _LIBJPEG,  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.5": (("pylibjpeg", "rle"), "pylibjpeg pylibjpeg-rle"),  # RLE (pydicom also decodes it alone)
}


def _decode_error(path: Path, ds: Any, error: Exception) -> str:
    """Why pixel data cannot be decoded: the file, its transfer syntax and, when a decoder is missing, what to install.

    The decoders of ``requirements.txt`` (pylibjpeg and its libjpeg/openjpeg/rle plugins) cover every syntax in
    ``DECODERS``; others (JPIP, MPEG/HEVC video, HTJ2K, ...) have no decoder for pydicom 2.4 and must be converted to
    an uncompressed syntax first (e.g. ``gdcmconv --raw`` or dcmtk's ``dcmdjpeg``/``dcmdjp2k``).
    """
    import importlib.util

    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    uid = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
    syntax = f"transfer syntax {uid.name} ({uid})" if uid else "no transfer syntax in the file meta"
    problem = f"{type(error).__name__}: {error}"
    if str(uid) in DECODERS:
        modules, packages = DECODERS[str(uid)]
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            return f"{path}: DICOM pixel data in {syntax} needs a decoder that is not installed: pip install {packages}"
        return f"{path}: DICOM pixel data in {syntax} cannot be decoded by the installed {packages} ({problem})"
    if uid and uid.is_compressed:
        return (
            f"{path}: DICOM pixel data in {syntax} has no decoder for pydicom 2.4 (none on pip); convert the file "
            f"to an uncompressed transfer syntax first, e.g. gdcmconv --raw ({problem})"
        )
    return f"{path}: DICOM pixel data cannot be decoded, {syntax} ({problem})"


def _stored_range(ds: Any) -> tuple[float, float]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def _dicom_meta(ds: Any, photometric: str, path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {"bits": int(ds.BitsStored), "source_format": "dicom", "photometric": photometric}
    spacing = _pixel_spacing(ds, path)
    if spacing is not None:
        meta["spacing"] = spacing
    if "ViewPosition" in ds:
        meta["view"] = str(ds.ViewPosition)
    return meta


def _pixel_spacing(ds: Any, path: Path) -> list[float] | None:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None when neither is usable.

    A value that is not two finite positive numbers (``0\\0``, one number, text) means unknown, not zero: it is
    ignored with a warning naming the file, and without a usable tag the image gets the spacing of files that have
    none (1 mm, ``LoadCXRd``).
    """
    from pydicom.multival import MultiValue

    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if tag not in ds or ds[tag].value in (None, "", b""):
            continue
        value = ds[tag].value
        try:
            values = [float(v) for v in (value if isinstance(value, (MultiValue, list, tuple)) else [value])]
        except (TypeError, ValueError):
            values = []
        if len(values) == 2 and all(np.isfinite(v) and v > 0 for v in values):
            return values
        message = f"{path}: {tag} {value!r} is not two positive numbers; ignored, as if the file had no {tag}"
        warnings.warn(message, stacklevel=3)
        logger.warning(message)
    return None


class LoadCXRd(MapTransform):
    """Dictionary transform: replace each key's path by a (1, rows, cols) float32 MetaTensor in [0, 1].

    The affine holds the pixel spacing (rows, cols) when the file states a valid one (DICOM), else 1 mm (PNG, and
    DICOM without spacing or with a zero/invalid one, which also warns); never a zero scale. The path is
    also kept as a plain string under ``f"{key}{path_postfix}"`` so outputs can name their image after batching.
    """

    def __init__(
        self, keys: str | Sequence[str], path_postfix: str = "_path", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.path_postfix = path_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image, meta = read_cxr(d[key])
            d[f"{key}{self.path_postfix}"] = str(d[key])
            spacing = meta.pop("spacing", [1.0, 1.0])
            affine = torch.diag(torch.tensor([spacing[0], spacing[1], 1.0, 1.0], dtype=torch.float64))
            meta["spatial_shape"] = np.asarray(image.shape)
            meta["original_channel_dim"] = "no_channel"
            d[key] = MetaTensor(torch.from_numpy(image[None]), affine=affine, meta=meta)
        return d


def list_images(input_dir: str | os.PathLike, skip_bad: bool = False) -> list[dict[str, str]]:
    """Datalist ``[{"image": path}]`` of every PNG/JPEG/DICOM under ``input_dir`` (recursively, sorted).

    With ``skip_bad`` each file is decoded once here and unreadable ones are dropped with a warning; without it
    the first bad file stops the run later with an error naming it.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p)))
    if not files:
        raise FileNotFoundError(f"{root}: no PNG/JPEG/DICOM images found")
    items = []
    for path in files:
        if skip_bad:
            try:
                read_cxr(path)
            except CXRReadError as e:
                warnings.warn(f"skipping bad image: {e}", stacklevel=2)
                logger.warning("skipping bad image: %s", e)
                continue
        items.append({"image": str(path)})
    if not items:
        raise FileNotFoundError(f"{root}: every image was unreadable (see warnings)")
    return items
