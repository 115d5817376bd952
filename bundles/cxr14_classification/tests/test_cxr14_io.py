"""Image decoding: DICOM photometric/rescale/VOI edge cases against independent numpy formulas, PNG bit depths,
and bad files that must fail with the file named."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from scripts.io import CXRReadError, LoadCXRd, list_images, read_cxr
from scripts.synthetic import write_dicom


def ramp(rows: int = 48, cols: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0, 1, cols), (rows, 1))


def test_monochrome1_is_inverted(tmp_path):
    stored = (np.arange(48 * 64).reshape(48, 64) % 4096).astype(np.uint16)
    path = write_dicom(stored / 4095.0, tmp_path / "m1.dcm", bits=12, monochrome1=True)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    image, meta = read_cxr(path)
    # MONOCHROME1: stored 0 is white -> independent expectation 1 - stored / (2**12 - 1)
    np.testing.assert_allclose(image, 1.0 - raw / 4095.0, atol=1e-6)
    assert meta["photometric"] == "MONOCHROME1" and meta["bits"] == 12
    np.testing.assert_allclose(image, stored / 4095.0, atol=1e-6)


def test_rescale_slope_intercept_and_window(tmp_path):
    path = write_dicom(ramp(), tmp_path / "r.dcm", bits=12, slope=2.0, intercept=-1024.0)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 1000.0, 2001.0  # narrower than the data: clips both ends
    ds.save_as(path)
    stored = ds.pixel_array.astype(np.float64)
    hu = stored * 2.0 - 1024.0
    lo, hi = 0 * 2.0 - 1024.0, 4095 * 2.0 - 1024.0
    c, w = 1000.0 - 0.5, 2001.0 - 1.0  # DICOM PS3.3 C.11.2.1.2 'LINEAR'
    y = np.clip(((hu - c) / w + 0.5), 0, 1) * (hi - lo) + lo
    y[hu <= c - w / 2] = lo
    y[hu > c + w / 2] = hi
    expected = (y - lo) / (hi - lo)
    image, _ = read_cxr(path)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image.min() == 0.0 and image.max() == 1.0


def test_rescale_without_window_uses_stored_range(tmp_path):
    path = write_dicom(ramp(), tmp_path / "s.dcm", bits=12, slope=0.5, intercept=100.0)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    modality = stored * 0.5 + 100.0
    expected = (modality - 100.0) / (4095 * 0.5)
    np.testing.assert_allclose(read_cxr(path)[0], expected, atol=1e-6)


def test_voi_lut_sequence(tmp_path):
    path = write_dicom(ramp(), tmp_path / "v.dcm", bits=12)
    ds = pydicom.dcmread(path)
    # a gamma-like LUT of 4096 entries, 16-bit output, first mapped value 0
    table = np.round(65535 * (np.arange(4096) / 4095.0) ** 0.5).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", table.tolist())  # LUTData
    ds.VOILUTSequence = DicomSequence([item])
    ds.save_as(path)
    stored = ds.pixel_array.astype(np.int64)
    expected = table[np.clip(stored, 0, 4095)] / 65535.0
    np.testing.assert_allclose(read_cxr(path)[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    "variant",
    [{"bits": 12, "slope": 2.0, "intercept": -1024.0, "window": True}, {"bits": 12, "monochrome1": True}, {"bits": 16}],
)
def test_dicom_matches_png(tmp_path, variant):
    png = (np.random.default_rng(0).random((40, 50)) * 255).round().astype(np.uint8)
    Image.fromarray(png, mode="L").save(tmp_path / "a.png")
    write_dicom(png / 255.0, tmp_path / "a.dcm", **variant)
    np.testing.assert_allclose(read_cxr(tmp_path / "a.dcm")[0], read_cxr(tmp_path / "a.png")[0], atol=2e-4)


def test_png_bit_depths_and_rgb(tmp_path):
    grey8 = (ramp() * 255).round().astype(np.uint8)
    Image.fromarray(grey8, mode="L").save(tmp_path / "g8.png")
    grey16 = (ramp() * 65535).round().astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgb = np.stack([grey8, grey8, grey8], -1)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    Image.fromarray(grey8, mode="L").save(tmp_path / "g8.jpg", quality=100)
    np.testing.assert_allclose(read_cxr(tmp_path / "g8.png")[0], grey8 / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_cxr(tmp_path / "g16.png")[0], grey16 / 65535.0, atol=1e-6)
    np.testing.assert_allclose(read_cxr(tmp_path / "rgb.png")[0], grey8 / 255.0, atol=1.5 / 255)
    assert np.abs(read_cxr(tmp_path / "g8.jpg")[0] - grey8 / 255.0).max() < 0.05
    assert read_cxr(tmp_path / "g16.png")[1]["bits"] == 16


def test_load_transform_keeps_path_and_spacing(tmp_path):
    path = write_dicom(ramp(), tmp_path / "x.dcm", pixel_spacing=0.2)
    out = LoadCXRd(keys="image")({"image": str(path)})
    assert tuple(out["image"].shape) == (1, 48, 64)
    assert out["image_path"] == str(path)
    np.testing.assert_allclose(np.diag(out["image"].affine.numpy())[:2], [0.2, 0.2])


def test_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 10)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "pixel.png")
    nopixels = write_dicom(ramp(), tmp_path / "nopix.dcm")
    ds = pydicom.dcmread(nopixels)
    del ds.PixelData
    ds.save_as(nopixels)
    for name, problem in [
        ("empty.png", "empty file"),
        ("garbage.png", "cannot be read"),
        ("pixel.png", "too small"),
        ("nopix.dcm", "no pixel data"),
        ("missing.png", "not found"),
    ]:
        with pytest.raises(CXRReadError, match=problem) as err:
            read_cxr(tmp_path / name)
        assert name in str(err.value)
    Image.fromarray((ramp() * 255).astype(np.uint8)).save(tmp_path / "good.png")
    with pytest.warns(UserWarning, match="garbage.png"):
        items = list_images(tmp_path, skip_bad=True)
    assert [p["image"].split("/")[-1] for p in items] == ["good.png"]
    assert len(list_images(tmp_path, skip_bad=False)) == 5  # bad ones fail later, when loaded


@pytest.mark.parametrize(
    "spacing_tags, expected, warns",
    [
        ({"PixelSpacing": [0.0, 0.0]}, [1.0, 1.0], "PixelSpacing"),  # the file: a zero-scale affine before
        ({}, [1.0, 1.0], None),  # no spacing: 1 mm, like a PNG (no warning)
        ({"PixelSpacing": [0.0, 0.0], "ImagerPixelSpacing": [0.15, 0.16]}, [0.15, 0.16], "PixelSpacing"),
        ({"PixelSpacing": [-0.2, 0.2]}, [1.0, 1.0], "PixelSpacing"),
        ({"PixelSpacing": 0.2}, [1.0, 1.0], "PixelSpacing"),  # one value (VM 1)
        ({"ImagerPixelSpacing": [0.2, 0.0]}, [1.0, 1.0], "ImagerPixelSpacing"),
    ],
)
def test_zero_or_missing_pixel_spacing_is_unknown(tmp_path, spacing_tags, expected, warns):
    path = write_dicom(ramp(), tmp_path / "sp.dcm")
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing
    for tag, value in spacing_tags.items():
        setattr(ds, tag, value)
    ds.save_as(path)
    if warns:
        with pytest.warns(UserWarning, match=rf"sp\.dcm: {warns} .* not two positive numbers"):
            out = LoadCXRd(keys="image")({"image": str(path)})
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = LoadCXRd(keys="image")({"image": str(path)})
    affine = out["image"].affine.numpy()
    np.testing.assert_allclose(np.diag(affine)[:2], expected)
    assert abs(np.linalg.det(affine)) > 0


# one file of each compressed transfer syntax from pydicom's own test data, against a file of the same picture in
# another lossless encoding (uncompressed, or RLE, itself checked against uncompressed in the first case);
# decoders: pylibjpeg + pylibjpeg-libjpeg / -openjpeg / -rle (requirements.txt)
COMPRESSED = [
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "MR_small.dcm", 0.0),  # RLE lossless
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "SC_rgb_rle.dcm", 3 / 255),  # JPEG baseline (lossy, YBR)
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", "SC_rgb_rle.dcm", 0.0),  # JPEG lossless (SV1)
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "MR_small.dcm", 0.0),  # JPEG 2000 lossless
    ("SC_rgb_gdcm_KY.dcm", "1.2.840.10008.1.2.4.91", "SC_rgb_rle.dcm", 0.0),  # JPEG 2000
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "MR_small.dcm", 0.0),  # JPEG-LS lossless
]


@pytest.mark.parametrize("name, syntax, reference, atol", COMPRESSED, ids=[c[0] for c in COMPRESSED])
def test_compressed_transfer_syntaxes_decode(name, syntax, reference, atol):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    reference_path = get_testdata_file(reference)
    reference_syntax = pydicom.dcmread(reference_path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert not reference_syntax.is_compressed or reference_syntax == "1.2.840.10008.1.2.5"  # RLE is lossless
    image, _ = read_cxr(path)
    np.testing.assert_allclose(image, read_cxr(reference_path)[0], atol=atol + 1e-6)


def test_greyscale_jpeg_baseline_radiograph_decodes(tmp_path):
    """The common CR/DX export: 8-bit MONOCHROME2 JPEG baseline (1.2.840.10008.1.2.4.50), written here from a
    synthetic radiograph (pydicom's own JPEG baseline files are RGB). It decodes to what Pillow decodes from the
    same JPEG stream (decoders may differ by one grey level), with the file's rows and columns."""
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    rng = np.random.default_rng(0)
    rows = np.linspace(0, 1, 200)[:, None]
    picture = np.clip(0.3 + 0.5 * np.exp(-((rows - 0.5) ** 2) * 8) + 0.05 * rng.standard_normal((200, 150)), 0, 1)
    stream = io.BytesIO()
    Image.fromarray(np.round(picture * 255).astype(np.uint8), mode="L").save(stream, format="JPEG", quality=90)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = pydicom.dataset.FileDataset(str(tmp_path / "cr.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "DX", meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 200, 150, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([stream.getvalue()])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(tmp_path / "cr.dcm")
    image, _ = read_cxr(tmp_path / "cr.dcm")
    expected = np.asarray(Image.open(io.BytesIO(stream.getvalue())), dtype=np.float64) / 255.0
    assert image.shape == expected.shape == (200, 150)
    np.testing.assert_allclose(image, expected, atol=1 / 255 + 1e-6)


def test_pinned_decoders_cover_the_common_compressed_syntaxes():
    """pylibjpeg and its plugins (pinned in requirements.txt / environment.yml) decode JPEG baseline, extended and
    lossless, JPEG-LS, JPEG 2000 and RLE: the syntaxes of DICOM radiographs in the wild. Without a plugin the
    matching syntax disappears from this list (pydicom still decodes RLE itself, so the RLE test above cannot
    tell whether pylibjpeg-rle is installed)."""
    from pylibjpeg.utils import get_pixel_data_decoders

    decoders = get_pixel_data_decoders()
    for syntax in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70",
                   "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                   "1.2.840.10008.1.2.5"):  # fmt: skip
        assert syntax in decoders, syntax


def test_missing_decoder_names_file_syntax_and_package(tmp_path, monkeypatch):
    """Without the JPEG 2000 plugin (simulated: module hidden, pydicom left with its numpy and RLE handlers) the
    error names the file, the transfer syntax and what to pip install."""
    import shutil
    import sys

    from pydicom import config
    from pydicom.data import get_testdata_file

    path = shutil.copy(get_testdata_file("MR_small_jp2klossless.dcm"), tmp_path / "j2k.dcm")
    monkeypatch.setitem(sys.modules, "openjpeg", None)
    handlers = [h for h in config.pixel_data_handlers if h.HANDLER_NAME in ("Numpy", "RLE Lossless")]
    assert len(handlers) == 2
    monkeypatch.setattr(config, "pixel_data_handlers", handlers)
    with pytest.raises(CXRReadError) as err:
        read_cxr(path)
    message = str(err.value)
    for part in ("j2k.dcm", "JPEG 2000 Image Compression (Lossless Only)", "1.2.840.10008.1.2.4.90"):
        assert part in message, message
    assert message.endswith("pip install pylibjpeg pylibjpeg-openjpeg"), message


def test_unsupported_syntax_and_corrupt_data_name_the_file(tmp_path):
    from pydicom.data import get_testdata_file

    # a video transfer syntax: no decoder exists for pydicom 2.4, the message says to convert the file
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile @ Main Level
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(CXRReadError, match=r"video\.dcm: .*MPEG2.*1\.2\.840\.10008\.1\.2\.4\.100.*uncompressed"):
        read_cxr(tmp_path / "video.dcm")
    # the decoder is installed but the JPEG 2000 stream is cut short: not told to install what it has
    from pydicom.encaps import encapsulate, generate_pixel_data_frame

    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    frame = next(generate_pixel_data_frame(ds.PixelData))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(tmp_path / "cut.dcm")
    with pytest.raises(CXRReadError, match=r"cut\.dcm: .*JPEG 2000.*cannot be decoded by the installed") as err:
        read_cxr(tmp_path / "cut.dcm")
    assert "pip install" not in str(err.value)
