"""BraTS label <-> region mapping per edition (REFERENCE.md section 1: 2018-2021 labels 1/2/4, 2023 labels 1/2/3;
TC = necrosis + enhancing, WT = TC + edema, ET = enhancing) checked voxel by voxel against a lookup table, plus the
input checks of ``scripts.brats`` on tiny NIfTI files written here (no synthetic dataset, no network)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.brats import (
    CONVENTIONS,
    GLI2023,
    LEGACY,
    REGIONS,
    BratsInputError,
    LabelsToRegionsd,
    LoadBratsCased,
    NestRegionsd,
    RegionsToLabelsd,
    _name,
    check_headers,
    check_stacked,
    convention,
    image_files,
)

# label value -> (TC, WT, ET) membership, written out per edition
TABLE = {
    "2018-2021": {0: (0, 0, 0), 1: (1, 1, 0), 2: (0, 1, 0), 4: (1, 1, 1)},
    "2023": {0: (0, 0, 0), 1: (1, 1, 0), 2: (0, 1, 0), 3: (1, 1, 1)},
}
SHAPE = (6, 5, 4)
AFFINE = np.diag([1.0, 1.2, 2.0, 1.0])


def random_seg(edition: str, seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    values = sorted(TABLE[edition])
    return np.random.default_rng(seed).choice(values, size=shape).astype(np.uint8)


def regions_by_table(seg: np.ndarray, edition: str) -> np.ndarray:
    out = np.zeros((3, *seg.shape), bool)
    for index, value in np.ndenumerate(seg):
        out[(slice(None), *index)] = TABLE[edition][int(value)]
    return out


def nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


# ---------------------------------------------------------------- conventions


def test_conventions_name_suffixes_and_label_values() -> None:
    assert REGIONS == ("TC", "WT", "ET")
    assert (LEGACY.name, LEGACY.suffixes, LEGACY.labels) == ("2018-2021", ("t1ce", "t1", "t2", "flair"), (0, 1, 2, 4))
    assert (GLI2023.name, GLI2023.suffixes, GLI2023.labels) == ("2023", ("t1c", "t1n", "t2w", "t2f"), (0, 1, 2, 3))
    assert CONVENTIONS == {"2018-2021": LEGACY, "2023": GLI2023}


@pytest.mark.parametrize("edition", ["2018-2021", "2023"])
def test_regions_match_the_table_and_map_back(edition: str) -> None:
    conv = CONVENTIONS[edition]
    seg = random_seg(edition, seed=len(edition))
    regions = conv.regions(seg)
    assert regions.shape == (3, *SHAPE) and regions.dtype == bool
    np.testing.assert_array_equal(regions, regions_by_table(seg, edition))
    back = conv.labels_from_regions(regions.astype(np.float32))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, seg)


def test_other_editions_values_are_not_regions() -> None:
    # a 2023 enhancing voxel (3) is nothing under 2018-2021, a 2018-2021 enhancing voxel (4) nothing under 2023
    seg = np.array([[[3, 4]]])
    assert LEGACY.regions(seg)[:, 0, 0].tolist() == [[False, True], [False, True], [False, True]]
    assert GLI2023.regions(seg)[:, 0, 0].tolist() == [[True, False], [True, False], [True, False]]


def test_labels_from_regions_nest_et_in_tc_in_wt() -> None:
    # (TC, WT, ET) per voxel: ET wins over everything, then TC -> necrosis, then WT -> edema; > 0.5 is "in"
    regions = np.array(
        [
            [1, 0, 0, 1, 0, 0.6, 0.5],  # TC
            [1, 1, 0, 0, 0, 0.6, 0.5],  # WT
            [1, 0, 1, 0, 0, 0.0, 0.5],  # ET
        ],
        dtype=np.float32,
    ).reshape(3, 1, 1, 7)
    assert LEGACY.labels_from_regions(regions)[0, 0].tolist() == [4, 2, 4, 1, 0, 1, 0]
    assert GLI2023.labels_from_regions(regions)[0, 0].tolist() == [3, 2, 3, 1, 0, 1, 0]
    extra = np.concatenate([regions, np.ones((1, 1, 1, 7), np.float32)])  # channels after ET are ignored
    assert LEGACY.labels_from_regions(extra)[0, 0].tolist() == [4, 2, 4, 1, 0, 1, 0]


@pytest.mark.parametrize(
    ("edition", "expected"),
    [
        ("2018-2021", LEGACY),
        ("2018", LEGACY),
        ("2019", LEGACY),
        ("2018-2019", LEGACY),
        ("2020", LEGACY),
        ("2021", LEGACY),
        ("2023", GLI2023),
        ("2024", GLI2023),
        ("2023-GLI", GLI2023),
        ("2025-GLI", GLI2023),
    ],
)
def test_edition_strings(edition: str, expected) -> None:
    assert convention(edition) is expected


@pytest.mark.parametrize("edition", ["2022", "2017", "20ab", "1999", "MSD", ""])
def test_unknown_editions_are_refused(edition: str) -> None:
    message = rf"^unknown BraTS edition '{edition}'; expected one of 2018-2021 or 2023$"
    with pytest.raises(BratsInputError, match=message):
        convention(edition)


def test_collated_edition_values() -> None:
    assert (_name(["2023"]), _name(("2021",)), _name("2020"), _name(2023)) == ("2023", "2021", "2020", "2023")
    assert _name(["2021", "2023"]) == "['2021', '2023']"  # a batch of two editions is not one edition


# ---------------------------------------------------------------- LabelsToRegionsd / RegionsToLabelsd


@pytest.mark.parametrize("edition", ["2018-2021", "2023", ["2023"]])
def test_labels_to_regions_follows_the_item_edition(edition) -> None:
    name = _name(edition)
    seg = random_seg(name, seed=3)
    label = MetaTensor(torch.as_tensor(seg[None], dtype=torch.float32), meta={"filename_or_obj": "seg.nii.gz"})
    out = LabelsToRegionsd("label")({"label": label, "edition": edition})["label"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.shape == (3, *SHAPE)
    assert out.meta["filename_or_obj"] == "seg.nii.gz"
    np.testing.assert_array_equal(out.numpy(), regions_by_table(seg, name))


def test_labels_to_regions_default_edition_and_plain_arrays() -> None:
    seg = random_seg("2018-2021", seed=4)
    out = LabelsToRegionsd("label")({"label": seg})["label"]  # no edition, a 3D numpy array: 2021 values
    assert isinstance(out, torch.Tensor) and not isinstance(out, MetaTensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), regions_by_table(seg, "2018-2021"))
    seg23 = random_seg("2023", seed=5)
    t = LabelsToRegionsd("seg", edition_key="ed", default_edition="2023")
    np.testing.assert_array_equal(t({"seg": seg23, "ed": None})["seg"].numpy(), regions_by_table(seg23, "2023"))
    np.testing.assert_array_equal(t({"seg": seg, "ed": "2020"})["seg"].numpy(), regions_by_table(seg, "2018-2021"))


def test_unexpected_label_values_name_the_file_or_key() -> None:
    seg = random_seg("2018-2021", seed=6).astype(np.float32)
    seg[0, 0, 0], seg[0, 0, 1] = 3, 1.5
    label = MetaTensor(torch.as_tensor(seg[None]), meta={"filename_or_obj": "/data/case_seg.nii.gz"})
    message = (
        r"^/data/case_seg\.nii\.gz: unexpected label values \[1\.5, 3\] for BraTS 2018-2021 \(allowed \[0, 1, 2, 4\]\)$"  # noqa: E501
    )
    with pytest.raises(BratsInputError, match=message):
        LabelsToRegionsd("label")({"label": label, "edition": "2021"})
    seg[0, 0, 1] = np.nan
    with pytest.raises(BratsInputError, match=r"^label: unexpected label values \[3, nan\] for BraTS 2018-2021"):
        LabelsToRegionsd("label")({"label": seg})
    unnamed = MetaTensor(torch.as_tensor(seg[None]))  # no file name in its meta: the key names it
    with pytest.raises(BratsInputError, match=r"^seg: unexpected label values \[3, nan\]"):
        LabelsToRegionsd("seg")({"seg": unnamed})
    legacy = random_seg("2018-2021", seed=7)
    message = r"unexpected label values \[4\] for BraTS 2023 \(allowed \[0, 1, 2, 3\]\)"
    with pytest.raises(BratsInputError, match=message):
        LabelsToRegionsd("label")({"label": legacy, "edition": "2023"})


def test_missing_label_key_is_an_error_unless_allowed() -> None:
    with pytest.raises(KeyError):
        LabelsToRegionsd("label")({"image": 1})
    assert LabelsToRegionsd("label", allow_missing_keys=True)({"image": 1}) == {"image": 1}


@pytest.mark.parametrize("edition", ["2018-2021", "2023"])
def test_regions_to_labels_writes_the_edition_values(edition: str) -> None:
    seg = random_seg(edition, seed=8)
    regions = MetaTensor(torch.as_tensor(regions_by_table(seg, edition), dtype=torch.float32), meta={"k": "v"})
    out = RegionsToLabelsd("pred")({"pred": regions, "edition": edition})["pred"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.uint8 and out.shape == (1, *SHAPE)
    assert out.meta["k"] == "v"
    np.testing.assert_array_equal(out[0].numpy(), seg)


def test_regions_to_labels_accepts_network_outputs_that_require_grad() -> None:
    seg = random_seg("2018-2021", seed=10)
    regions = torch.as_tensor(regions_by_table(seg, "2018-2021"), dtype=torch.float32).requires_grad_()
    np.testing.assert_array_equal(RegionsToLabelsd("pred")({"pred": regions})["pred"][0].numpy(), seg)


def test_regions_to_labels_default_edition_and_plain_arrays() -> None:
    seg = random_seg("2023", seed=9)
    regions = regions_by_table(seg, "2023").astype(np.float32)
    out = RegionsToLabelsd("pred", default_edition="2023")({"pred": regions})["pred"]
    assert isinstance(out, torch.Tensor) and not isinstance(out, MetaTensor)
    np.testing.assert_array_equal(out[0].numpy(), seg)
    legacy = RegionsToLabelsd("pred")({"pred": torch.as_tensor(regions)})["pred"]  # no edition: 2021 values
    np.testing.assert_array_equal(legacy[0].numpy(), np.where(seg == 3, 4, seg))


def test_nested_regions_by_hand() -> None:
    # (TC, WT, ET) per voxel -> nested: TC |= ET, WT |= TC; a channel counts when > 0.5
    regions = torch.tensor(
        [
            [0, 0, 1, 1, 0, 0.6, 0.5],  # TC
            [0, 1, 0, 0, 0, 0.0, 0.5],  # WT
            [1, 0, 0, 1, 0, 0.0, 0.5],  # ET
        ]
    ).reshape(3, 1, 1, 7)
    out = NestRegionsd("pred")({"pred": regions})["pred"]
    assert out.dtype == torch.float32 and not isinstance(out, MetaTensor)
    assert out[:, 0, 0].tolist() == [
        [1, 0, 1, 1, 0, 1, 0],  # TC: its own voxels and the ET voxels
        [1, 1, 1, 1, 0, 1, 0],  # WT: its own voxels and TC (with ET)
        [1, 0, 0, 1, 0, 0, 0],  # ET unchanged
    ]


@pytest.mark.parametrize("edition", ["2018-2021", "2023"])
def test_nested_regions_are_the_regions_of_the_written_label_map(edition: str) -> None:
    """What validation scores equals what inference writes: regions(labels_from_regions(x)) for any channels."""
    conv = CONVENTIONS[edition]
    rng = np.random.default_rng(11)
    channels = rng.choice([0.0, 0.3, 0.5, 0.7, 1.0], size=(3, *SHAPE)).astype(np.float32)
    pred = MetaTensor(torch.as_tensor(channels, dtype=torch.float64), affine=torch.as_tensor(AFFINE))
    pred.meta["filename_or_obj"] = "case"
    out = NestRegionsd("pred")({"pred": pred, "image": 1})
    assert out["image"] == 1
    assert isinstance(out["pred"], MetaTensor) and out["pred"].meta["filename_or_obj"] == "case"
    np.testing.assert_array_equal(out["pred"].affine.numpy(), AFFINE)  # written in the input's space
    assert out["pred"].dtype == torch.float64
    written = conv.labels_from_regions(channels)
    np.testing.assert_array_equal(out["pred"].numpy(), conv.regions(written))


# ---------------------------------------------------------------- header checks on tiny files


def test_check_headers_returns_the_shared_geometry(tmp_path: Path) -> None:
    files = [nifti(tmp_path / f"m{i}.nii.gz", np.zeros(SHAPE, np.float32)) for i in range(3)]
    shape, affine = check_headers(files)
    assert shape == SHAPE and np.allclose(affine, AFFINE)
    nearly = AFFINE.copy()
    nearly[0, 3] += 5e-4  # within the default 1e-3 mm tolerance
    files.append(nifti(tmp_path / "near.nii.gz", np.zeros(SHAPE, np.float32), nearly))
    assert check_headers(files)[0] == SHAPE
    with pytest.raises(BratsInputError, match=r"near\.nii\.gz: affine differs from m0\.nii\.gz"):
        check_headers(files, atol=1e-4)


def test_check_headers_names_the_bad_file(tmp_path: Path) -> None:
    good = nifti(tmp_path / "t1.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(BratsInputError, match=r"^\S*gone\.nii\.gz: file not found$"):
        check_headers([good, str(tmp_path / "gone.nii.gz")])
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(BratsInputError, match=r"junk\.nii\.gz: not a readable NIfTI file \("):
        check_headers([good, str(tmp_path / "junk.nii.gz")])
    small = nifti(tmp_path / "small.nii.gz", np.zeros((6, 5, 3), np.float32))
    message = r"small\.nii\.gz: shape \(6, 5, 3\) differs from t1\.nii\.gz \(6, 5, 4\)$"
    with pytest.raises(BratsInputError, match=message):
        check_headers([good, small])
    moved = AFFINE.copy()
    moved[1, 3] = 5.0
    shifted = nifti(tmp_path / "shifted.nii.gz", np.zeros(SHAPE, np.float32), moved)
    with pytest.raises(BratsInputError, match=r"shifted\.nii\.gz: affine differs from t1\.nii\.gz:\n"):
        check_headers([good, shifted])


def test_check_headers_refuses_4d_and_2d_volumes(tmp_path: Path) -> None:
    four = nifti(tmp_path / "BRATS_001.nii.gz", np.zeros((*SHAPE, 4), np.float32))
    message = r"BRATS_001\.nii\.gz: expected a 3D volume, found shape \(6, 5, 4, 4\) \(4D NIfTI: the Medical Segmentation Decathlon layout is not supported\)$"  # noqa: E501
    with pytest.raises(BratsInputError, match=message):
        check_headers([four])
    two = nifti(tmp_path / "flat.nii.gz", np.zeros((6, 5), np.float32))
    with pytest.raises(BratsInputError, match=r"flat\.nii\.gz: expected a 3D volume, found shape \(6, 5\)$"):
        check_headers([two])


def test_check_headers_against_a_reference(tmp_path: Path) -> None:
    seg = nifti(tmp_path / "seg.nii.gz", np.zeros(SHAPE, np.uint8))
    assert check_headers([seg], reference=(SHAPE, AFFINE, "case.nii.gz")) == (SHAPE, AFFINE)
    message = r"seg\.nii\.gz: shape \(6, 5, 4\) differs from case\.nii\.gz \(6, 5, 5\)"
    with pytest.raises(BratsInputError, match=message):
        check_headers([seg], reference=((6, 5, 5), AFFINE, "case.nii.gz"))
    with pytest.raises(BratsInputError, match=r"seg\.nii\.gz: affine differs from case\.nii\.gz"):
        check_headers([seg], reference=(SHAPE, np.eye(4), "case.nii.gz"))


def test_check_stacked(tmp_path: Path) -> None:
    stacked = nifti(tmp_path / "case.nii.gz", np.zeros((*SHAPE, 4), np.float32))
    shape, affine = check_stacked(stacked)
    assert shape == SHAPE and np.allclose(affine, AFFINE)
    with pytest.raises(BratsInputError, match=r"^\S*none\.nii\.gz: file not found$"):
        check_stacked(tmp_path / "none.nii.gz")
    decathlon = nifti(tmp_path / "BRATS_012.nii.gz", np.zeros((*SHAPE, 4), np.float32))
    message = (
        r"BRATS_012\.nii\.gz: a Medical Segmentation Decathlon Task01 image \(channels FLAIR, T1w, T1gd, T2w and "
        r"labels 1 edema / 2 non-enhancing / 3 enhancing\) is not supported; use the BraTS 2018-2021 or 2023 files$"
    )
    with pytest.raises(BratsInputError, match=message):
        check_stacked(decathlon)
    (tmp_path / "junk.nii").write_bytes(b"\0" * 10)
    with pytest.raises(BratsInputError, match=r"junk\.nii: not a readable NIfTI file"):
        check_stacked(tmp_path / "junk.nii")
    for bad in (np.zeros(SHAPE), np.zeros((*SHAPE, 3))):
        path = nifti(tmp_path / "bad.nii.gz", bad.astype(np.float32))
        message = rf"bad\.nii\.gz: a single image file must hold the 4 modalities as a 4D NIfTI \(x, y, z, 4\) in the order T1c, T1, T2, FLAIR; found shape {re.escape(str(bad.shape))}\. Otherwise give the 4 modality files\.$"  # noqa: E501
        with pytest.raises(BratsInputError, match=message):
            check_stacked(path)


def test_image_files() -> None:
    assert image_files("a.nii.gz") == ["a.nii.gz"]
    assert image_files(Path("b.nii.gz")) == ["b.nii.gz"]
    assert image_files([Path("c.nii.gz")]) == ["c.nii.gz"]
    assert image_files(["1", "2", "3", Path("4")]) == ["1", "2", "3", "4"]
    message = r"^expected 4 modality files \(T1c, T1, T2, FLAIR\) or one 4-channel NIfTI, got 2: \['1', '2'\]$"
    with pytest.raises(BratsInputError, match=message):
        image_files(["1", "2"])


# ---------------------------------------------------------------- loading a case


def four_files(tmp_path: Path, seed: int = 0, dtype: type = np.float32) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    data = (rng.normal(size=(4, *SHAPE)) * 100).astype(dtype)
    return [nifti(tmp_path / f"m{i}.nii.gz", data[i]) for i in range(4)], data


def test_load_four_modalities_and_seg(tmp_path: Path) -> None:
    files, data = four_files(tmp_path)
    seg = random_seg("2018-2021", seed=1)
    item = {"image": files, "label": nifti(tmp_path / "seg.nii.gz", seg), "case": "c1"}
    d = LoadBratsCased(["image", "label"])(item)
    assert d["case"] == "c1"
    assert d["image"].shape == (4, *SHAPE) and d["image"].dtype == torch.float32
    np.testing.assert_allclose(d["image"].numpy(), data)
    assert d["image"].meta["filename_or_obj"] == files[0]
    np.testing.assert_allclose(d["image"].affine.numpy(), AFFINE)
    assert d["label"].shape == (1, *SHAPE)
    np.testing.assert_array_equal(d["label"][0].numpy(), seg)
    without_label = LoadBratsCased(["image", "label"])({"image": files})  # inference items have no label
    assert set(without_label) == {"image"}
    with pytest.raises(KeyError):
        LoadBratsCased(["image", "label"], allow_missing_keys=False)({"image": files})


def test_integer_files_load_as_float32(tmp_path: Path) -> None:
    files, data = four_files(tmp_path, dtype=np.int16)  # BraTS distributes int16 volumes
    image = LoadBratsCased(["image"])({"image": files})["image"]
    assert image.dtype == torch.float32
    np.testing.assert_array_equal(image.numpy(), data.astype(np.float32))
    stacked = nifti(tmp_path / "case.nii.gz", np.moveaxis(data, 0, -1))
    assert LoadBratsCased(["image"])({"image": stacked})["image"].dtype == torch.float32


def test_load_one_four_channel_file(tmp_path: Path) -> None:
    _, data = four_files(tmp_path)
    stacked = nifti(tmp_path / "case.nii.gz", np.moveaxis(data, 0, -1))
    seg = nifti(tmp_path / "seg.nii.gz", random_seg("2023", seed=2))
    d = LoadBratsCased(["img", "seg"], image_key="img")({"img": stacked, "seg": seg})
    assert d["img"].shape == (4, *SHAPE)
    np.testing.assert_allclose(d["img"].numpy(), data)
    assert d["img"].meta["filename_or_obj"] == stacked
    assert d["seg"].shape == (1, *SHAPE)
    other = nifti(tmp_path / "other.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(BratsInputError, match=r"other\.nii\.gz: shape \(6, 5, 3\) differs from case\.nii\.gz"):
        LoadBratsCased(["img", "seg"], image_key="img")({"img": stacked, "seg": other})


def test_non_finite_voxels_are_counted_and_named(tmp_path: Path) -> None:
    files, data = four_files(tmp_path)
    bad = data[2].copy()
    bad[0, 0, 0], bad[1, 1, 1] = np.nan, np.inf
    nifti(Path(files[2]), bad)
    with pytest.raises(BratsInputError, match=r"m2\.nii\.gz: 2 voxels are NaN or Inf$"):
        LoadBratsCased(["image"])({"image": files})
    stacked_data = np.moveaxis(data, 0, -1).copy()
    stacked_data[2, 2, 2, 3] = np.nan
    stacked = nifti(tmp_path / "case.nii.gz", stacked_data)
    with pytest.raises(BratsInputError, match=r"case\.nii\.gz: 1 voxels are NaN or Inf$"):
        LoadBratsCased(["image"])({"image": stacked})


def test_truncated_data_is_named(tmp_path: Path) -> None:
    files, _ = four_files(tmp_path)
    raw = gzip.decompress(Path(files[1]).read_bytes())
    Path(files[1]).write_bytes(gzip.compress(raw[: len(raw) - 40]))  # header intact, voxels cut short
    with pytest.raises(BratsInputError, match=r"m1\.nii\.gz: cannot read the NIfTI data \(OSError: "):
        LoadBratsCased(["image"])({"image": files})
