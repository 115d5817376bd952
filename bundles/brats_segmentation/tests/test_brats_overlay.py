"""The PNG overlay people read: orientation from the affine (radiological convention), one colour per region name
in both editions, plain-number texts and a region legend.

Synthetic volumes built here in a RAS voxel order, then stored in other voxel orders with the affine that keeps
every voxel at the same world position, so the picture must not change with the voxel order.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from scripts.brats import GLI2023, LEGACY
from scripts.writers import REGION_COLOURS, SaveBratsSegd, overlay_panels, panel_origins

SHAPE = (40, 36, 30)  # x, y, z in the RAS voxel order: index increasing towards patient Right, Anterior, Superior
SPACING = (1.0, 1.2, 2.0)
CORNER = 28  # pixels: the orientation letters sit in the panel's top corners
ET, NCR, ED = REGION_COLOURS["enhancing tumour"], REGION_COLOURS["necrotic core"], REGION_COLOURS["oedema"]


def _ras_case(et: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background, labels and RAS affine: a bright ellipsoid 'head' with a tumour on the patient's LEFT (low x
    index in RAS order), centre of mass at RAS index (7, 17, 15)."""
    idx = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1)[:, None, None, None] / 2
    head = (((idx - centre) / (np.array(SHAPE)[:, None, None, None] / 2.2)) ** 2).sum(0) <= 1
    background = np.where(head, 100.0 + idx[1], 0.0)  # a gradient, so the window has a range
    r = np.sqrt(((idx - np.array([7.0, 17.0, 15.0])[:, None, None, None]) ** 2).sum(0))  # in voxels
    labels = np.zeros(SHAPE, np.uint8)
    labels[r <= 5.5] = 2  # oedema
    labels[r <= 3.5] = et  # enhancing rim
    labels[r <= 1.5] = 1  # necrotic core; balls about (7, 17, 15), so that is the centre of mass
    background[labels > 0] = 150.0
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-20.0, -30.0, 10.0)
    return background, labels, affine


def _stored_as(order: str, volume: np.ndarray, ras_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in another voxel order, with the affine that keeps their world positions.

    RAS: as built; LPS: x and y reversed (BraTS's diag(-1, -1, 1): negative first column);
    PRS: axes swapped, stored index 0 runs towards Posterior and index 1 towards Right."""
    nx, ny, _ = volume.shape
    if order == "RAS":
        return volume, ras_affine
    if order == "LPS":  # stored[i, j, k] = ras[nx-1-i, ny-1-j, k]
        to_ras = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        return volume[::-1, ::-1, :].copy(), ras_affine @ to_ras
    if order == "PRS":  # stored[a, b, k] = ras[b, ny-1-a, k]
        to_ras = np.array([[0, 1, 0, 0], [-1, 0, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        return volume[:, ::-1, :].transpose(1, 0, 2).copy(), ras_affine @ to_ras
    raise ValueError(order)


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are not grey (region fill or outline), for float or uint8 images."""
    rgb = rgb.astype(float)
    return (np.abs(rgb[..., 0] - rgb[..., 1]) > 1e-6) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 1e-6)


def _write(tmp_path: Path, background: np.ndarray, labels: np.ndarray, affine: np.ndarray, **item) -> Path:
    """Through the inference writer: reference NIfTI with ``affine``, 4-channel image (FLAIR last)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    reference = tmp_path / "case_t1c.nii.gz"
    nib.save(nib.Nifti1Image(background.astype(np.float32), affine), str(reference))
    image = MetaTensor(torch.as_tensor(np.stack([background] * 4), dtype=torch.float32))
    image.meta["filename_or_obj"] = str(reference)
    SaveBratsSegd("pred", tmp_path, overlay=True)({"image": image, "pred": labels[None], "case": "case", **item})
    return tmp_path / "case_overlay.png"


@pytest.mark.parametrize("order", ["RAS", "LPS", "PRS"])
def test_tumour_on_the_patients_left_is_on_the_image_right(order: str, tmp_path: Path) -> None:
    background, labels, ras_affine = _ras_case()
    bg, affine = _stored_as(order, background, ras_affine)
    lab, _ = _stored_as(order, labels, ras_affine)
    overlay = overlay_panels(bg, lab, affine)
    panels = {p.name: p for p in overlay.panels}
    assert [p.name for p in overlay.panels] == ["axial", "coronal", "sagittal"]
    # planes through the tumour's centre of mass (RAS index 7, 17, 15), whatever the voxel order
    assert (panels["axial"].slice_index, panels["coronal"].slice_index, panels["sagittal"].slice_index) == (15, 17, 7)
    for name in ("axial", "coronal"):
        p = panels[name]
        assert (p.left, p.right) == ("R", "L")
        cols = np.nonzero(_coloured(p.rgb))[1]
        width = p.rgb.shape[1]
        assert cols.size and cols.min() > width / 2, f"{order} {name}: tumour not on the image's right"
        assert min(p.rgb.shape[:2]) >= 256
    assert (panels["sagittal"].left, panels["sagittal"].right) == ("A", "P")
    # the written PNG holds these panels pixel for pixel where panel_origins says
    png = np.asarray(Image.open(_write(tmp_path, bg, lab, affine)).convert("RGB"))
    for p, (r, c) in zip(overlay.panels, panel_origins(overlay)):
        h, w = p.rgb.shape[:2]
        written = png[r : r + h, c : c + w]
        differs = np.abs(written.astype(int) - np.round(p.rgb * 255)).max(axis=-1) > 1
        differs[:CORNER, :CORNER] = differs[:CORNER, -CORNER:] = False  # the orientation letters
        assert not differs.any(), p.name
        if p.name != "sagittal":
            cols = np.nonzero(_coloured(written))[1]
            assert cols.size and cols.min() > w / 2, f"{order} {p.name} in the PNG"


def test_panels_do_not_depend_on_the_voxel_order() -> None:
    background, labels, ras_affine = _ras_case()
    reference = overlay_panels(background, labels, ras_affine)
    for order in ("LPS", "PRS"):
        bg, affine = _stored_as(order, background, ras_affine)
        lab, _ = _stored_as(order, labels, ras_affine)
        for a, b in zip(reference.panels, overlay_panels(bg, lab, affine).panels):
            np.testing.assert_array_equal(a.rgb, b.rgb, err_msg=f"{order} {a.name}")


def test_enhancing_tumour_has_one_colour_in_both_editions(tmp_path: Path) -> None:
    background, labels_2021, affine = _ras_case(et=4)
    _, labels_2023, _ = _ras_case(et=3)
    pngs = {}
    for edition, labels in (("2021", labels_2021), ("2023", labels_2023)):
        out = tmp_path / edition
        pngs[edition] = np.asarray(Image.open(_write(out, background, labels, affine, edition=edition)).convert("RGB"))
    # same geometry, so the same coloured pixels (the legend differs only in its black text: label 4 vs 3)
    assert pngs["2021"].shape == pngs["2023"].shape
    colours = {e: np.unique(p[_coloured(p)], axis=0) for e, p in pngs.items()}
    np.testing.assert_array_equal(colours["2021"], colours["2023"])
    np.testing.assert_array_equal(pngs["2021"][_coloured(pngs["2021"])], pngs["2023"][_coloured(pngs["2023"])])
    # and the enhancing tumour's outline is the fixed enhancing-tumour colour, for either edition's values
    for labels, conv in ((labels_2021, LEGACY), (labels_2023, GLI2023), (labels_2021, None), (labels_2023, None)):
        axial = overlay_panels(background, labels, affine, conv).panels[0].rgb
        assert np.all(axial == ET, axis=-1).any() and np.all(axial == NCR, axis=-1).any()
        assert np.all(axial == ED, axis=-1).any()


def test_overlay_texts_are_plain_numbers_with_a_region_legend(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    texts: list[str] = []
    save = Figure.savefig

    def recording_savefig(fig: Figure, *args, **kwargs):
        texts.extend(t.get_text() for t in fig.texts)
        for ax in fig.axes:
            texts.extend([ax.get_title(), *(t.get_text() for t in ax.texts)])
            if ax.get_legend() is not None:
                texts.extend(t.get_text() for t in ax.get_legend().get_texts())
        for legend in fig.legends:
            texts.extend(t.get_text() for t in legend.get_texts())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    background, labels, affine = _ras_case()
    _write(tmp_path, background, labels, affine, edition="2021")
    joined = "\n".join(texts)
    assert texts and "np." not in joined and "uint8" not in joined, joined
    assert "case" in joined and "mL" in joined
    for region in ("necrotic core", "oedema", "enhancing tumour"):
        assert region in joined, f"legend lacks {region!r}: {joined}"


def _record_figure_texts(monkeypatch) -> list[str]:
    """Texts of every figure saved from now on (figure texts and legends)."""
    from matplotlib.figure import Figure

    texts: list[str] = []
    save = Figure.savefig

    def recording_savefig(fig: Figure, *args, **kwargs):
        texts.extend(t.get_text() for t in fig.texts)
        texts.extend(t.get_text() for legend in fig.legends for t in legend.get_texts())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return texts


def test_legend_label_values_follow_the_default_edition(tmp_path: Path, monkeypatch) -> None:
    """A 4D study has no edition: RegionsToLabelsd writes default_edition's values, and so says the legend, also
    when the label map holds no enhancing tumour (nothing in it tells 3 from 4 then)."""
    background, labels, affine = _ras_case(et=3)
    labels[labels == 3] = 1
    reference = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([background] * 4, axis=-1).astype(np.float32), affine), str(reference))
    image = MetaTensor(torch.as_tensor(np.stack([background] * 4), dtype=torch.float32))
    image.meta["filename_or_obj"] = str(reference)
    texts = _record_figure_texts(monkeypatch)
    for default, et in (("2023", 3), ("2021", 4)):
        texts.clear()
        SaveBratsSegd("pred", tmp_path / default, overlay=True, default_edition=default)(
            {"image": image, "pred": labels[None]}
        )
        assert f"enhancing tumour (label {et})" in "\n".join(texts), texts
    config = (Path(__file__).resolve().parents[1] / "configs" / "inference.json").read_text()
    assert '"default_edition": "@default_edition"' in config


def test_empty_prediction_shows_the_volume_centre() -> None:
    background, labels, affine = _ras_case()
    overlay = overlay_panels(background, np.zeros_like(labels), affine)
    assert [p.slice_index for p in overlay.panels] == [15, 18, 20]  # round((30-1)/2), round((36-1)/2), ...
    assert not any(_coloured(p.rgb).any() for p in overlay.panels)
    assert "no tumour predicted" in overlay.subtitle
