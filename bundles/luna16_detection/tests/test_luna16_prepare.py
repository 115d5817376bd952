"""Prepare step on the real layout: datalists per official fold and clear errors for bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from scripts.prepare import (
    LunaDataError,
    build_items,
    fold_datalist,
    inference_items,
    read_annotations,
    read_mhd_header,
    write_datalists,
)
from scripts.synthetic import generate

HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm\n"


@pytest.fixture(scope="module")
def luna_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("luna"), n_scans=12, size=(40, 40, 16), empty_fraction=0.3, seed=3)


def _copy_root(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_folds_follow_official_subsets(luna_root: Path, tmp_path: Path) -> None:
    dl = fold_datalist(luna_root, fold=0)
    assert {i["subset"] for i in dl["test"]} == {0}
    assert {i["subset"] for i in dl["validation"]} == {1}
    assert {i["subset"] for i in dl["training"]} == set(range(2, 10))
    items = dl["training"] + dl["validation"] + dl["test"]
    assert len(items) == 12 and "world mm" in dl["coordinates"]
    empty = [i for i in items if not i["nodules"]]
    assert empty and all(i["box"] == [] and i["label"] == [] for i in empty)  # scans without nodules kept
    for i in items:
        assert len(i["box"]) == len(i["label"]) == len(i["nodules"])
        for b, n in zip(i["box"], i["nodules"]):
            assert b == [n[0], n[1], n[2], n[3], n[3], n[3]]  # world centre-size, the diameter on each axis
    written = write_datalists(luna_root, tmp_path)
    assert [p.name for p in written] == [f"datalist_fold{k}.json" for k in range(10)]


def test_missing_and_truncated_raw(luna_root: Path, tmp_path: Path) -> None:
    root = _copy_root(luna_root, tmp_path / "root")
    mhd = sorted((root / "subset3").glob("*.mhd"))[0]
    raw = mhd.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(LunaDataError, match=rf"{raw.name}: truncated, 1000 bytes"):
        build_items(root)
    raw.unlink()
    with pytest.raises(LunaDataError, match=rf"{mhd.name}: its data file {raw.name} is missing"):
        read_mhd_header(mhd)


@pytest.mark.parametrize(
    "row, message",
    [
        ("uid1,1.0,2.0\n", r":2: expected 5 fields"),
        ("uid1,1.0,abc,3.0,5.0\n", r":2: non-numeric"),
        ("uid1,1.0,2.0,3.0,nan\n", r":2: empty seriesuid or NaN"),
        ("uid1,1.0,2.0,3.0,-4.0\n", r":2: nodule diameter must be > 0"),
        ("uid1,1.0,2.0,3.0,0\n", r":2: nodule diameter must be > 0"),
    ],
)
def test_malformed_annotation_rows(tmp_path: Path, row: str, message: str) -> None:
    f = tmp_path / "annotations.csv"
    f.write_text(HEADER + row)
    with pytest.raises(LunaDataError, match=rf"annotations.csv{message}"):
        read_annotations(f)


def test_excluded_file_accepts_minus_one_only(tmp_path: Path) -> None:
    f = tmp_path / "annotations_excluded.csv"
    f.write_text(HEADER + "u,1,2,3,-1\nu,1,2,3,2.5\n")
    assert read_annotations(f, excluded=True) == {"u": [[1, 2, 3, -1], [1, 2, 3, 2.5]]}
    f.write_text(HEADER + "u,1,2,3,-2\n")
    with pytest.raises(LunaDataError, match="-1"):
        read_annotations(f, excluded=True)
    (tmp_path / "wrong.csv").write_text("uid,x,y,z,d\n")
    with pytest.raises(LunaDataError, match="header must start with seriesuid"):
        read_annotations(tmp_path / "wrong.csv")


def test_unknown_seriesuid_warns_or_fails(luna_root: Path, tmp_path: Path, caplog) -> None:
    root = _copy_root(luna_root, tmp_path / "root")
    with open(root / "annotations.csv", "a") as f:
        f.write("9.9.9.unknown,1,2,3,6\n")
    with caplog.at_level(logging.WARNING):
        items = build_items(root)
    assert "1 seriesuid(s) have no scan" in caplog.text and "9.9.9.unknown" in caplog.text
    assert all(i["seriesuid"] != "9.9.9.unknown" for i in items)
    with pytest.raises(LunaDataError, match="no scan under"):
        build_items(root, strict=True)


def test_nodule_outside_scan_is_an_error_or_dropped(luna_root: Path, tmp_path: Path) -> None:
    root = _copy_root(luna_root, tmp_path / "root")
    uid = sorted((root / "subset2").glob("*.mhd"))[0].stem
    with open(root / "annotations.csv", "a") as f:
        f.write(f"{uid},5000,5000,5000,6\n")  # e.g. voxel indices mistaken for mm would land far away
    with pytest.raises(LunaDataError, match=rf"{uid} lies outside its scan"):
        build_items(root)
    items = {i["seriesuid"]: i for i in build_items(root, outside="drop")}
    assert [5000.0, 5000.0, 5000.0, 6.0] not in items[uid]["nodules"]


def test_inference_inputs(luna_root: Path, tmp_path: Path) -> None:
    assert len(inference_items(luna_root)) == 12
    assert len(inference_items(luna_root, subsets=[0, 1])) == 4
    one = sorted((luna_root / "subset0").glob("*.mhd"))[0]
    assert inference_items(one) == [{"image": str(one.resolve()), "seriesuid": one.stem}]
    with pytest.raises(LunaDataError, match="no .mhd scans"):
        inference_items(tmp_path)
    dicom_dir = tmp_path / "dicom"
    _write_dicom_series(dicom_dir, "1.2.3.4.5")
    assert inference_items(dicom_dir) == [{"image": str(dicom_dir.resolve()), "seriesuid": "1.2.3.4.5"}]


def _write_dicom_series(folder: Path, series_uid: str, n: int = 3) -> None:
    """A minimal CT series (pydicom) for the input-detection test."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series_uid, "CT"
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(k)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [1, 1], 1, -1024
        ds.PixelData = np.zeros((4, 4), np.int16).tobytes()
        ds.save_as(folder / f"{k}.dcm", write_like_original=False)


def test_resampled_copy_keeps_world_geometry(tmp_path: Path) -> None:
    import itk

    from scripts.prepare import resample_dataset

    src = generate(tmp_path / "src", n_scans=4, size=(48, 48, 20), empty_fraction=0.0, n_subsets=2, seed=8)
    dst = resample_dataset(src, tmp_path / "dst", spacing=(1.0, 1.0, 2.0))
    before, after = build_items(src), build_items(dst)
    assert [i["nodules"] for i in before] == [i["nodules"] for i in after]  # world mm: annotations unchanged
    checked = 0
    for b, a in zip(before, after):
        hb, ha = read_mhd_header(b["image"]), read_mhd_header(a["image"])
        assert ha["spacing"] == [1.0, 1.0, 2.0] and np.allclose(ha["origin"], hb["origin"])
        np.testing.assert_allclose(ha["direction"], hb["direction"], atol=1e-9)
        image = itk.imread(a["image"])
        array = itk.array_view_from_image(image)
        for x, y, z, d in a["nodules"]:
            if d >= 6:
                i, j, k = image.TransformPhysicalPointToIndex([x, y, z])
                # above the lung's -850 HU; ground-glass nodules reach only -650..-350 HU
                assert array[k, j, i] > -720, f"{a['image']}: no nodule at ({x}, {y}, {z})"
                checked += 1
    assert checked
