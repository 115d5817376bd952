"""The synthetic twin against a real brain: the MNI152 2009a template that nilearn ships (T1 at 1 mm with grey- and
white-matter probability maps, the average of 152 adults). What is compared is what a segmentation model sees:
tissue contrast, the share of grey matter, the brain's size in the grid, and how a tumour sits in the anatomy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from benchmarks.twin_transfer import load_template
from scripts import synthetic

DEMO_SIZE = (96, 96, 64)


@pytest.fixture(scope="module")
def mni() -> dict[str, float]:
    """Measured on the real template: T1 medians per tissue relative to grey matter, grey-matter share of the
    parenchyma, brain extent in mm."""
    template = load_template()
    t1, gm, wm = template["t1"], template["gm"], template["wm"]
    brain = t1 > 0
    grey = np.median(t1[gm > 0.7])
    extent = [int(a.max() - a.min() + 1) for a in np.nonzero(brain)]
    return {
        "wm_gm": float(np.median(t1[wm > 0.9]) / grey),
        "csf_gm": float(np.median(t1[brain & (gm + wm < 0.1)]) / grey),
        "gm_share": float(gm.sum() / (gm.sum() + wm.sum())),
        "extent": extent,  # left-right, front-back, bottom-top
    }


def twin(seed: int, size=DEMO_SIZE, enhancing: bool = True):
    rng = np.random.default_rng(seed)
    tissue, vox_per_mm = synthetic.make_anatomy(rng, size)
    displaced, label, _ = synthetic.place_tumour(rng, tissue, vox_per_mm, enhancing)
    images = synthetic.render(rng, displaced, label, vox_per_mm, enhancing)
    return tissue, displaced, label, images, vox_per_mm


def medians(image: np.ndarray, displaced: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Median intensity per tissue (normal tissue away from borders, so that partial volume does not decide) and
    per tumour compartment."""
    out = {}
    for code, name in synthetic.TISSUES.items():
        inner = ndimage.binary_erosion((displaced == code) & (label == 0))
        out[name] = float(np.median(image[inner]))
    for value, name in ((2, "edema"), (3, "enhancing"), (1, "necrosis")):
        if (label == value).any():
            out[name] = float(np.median(image[label == value]))
    return out


def test_t1_contrast_matches_the_mni152_template(mni):
    t1 = synthetic.MODALITIES.index("t1")
    ratios = []
    for seed in range(3):
        _, displaced, label, images, _ = twin(seed)
        m = medians(images[t1], displaced, label)
        ratios.append((m["wm"] / m["gm"], m["csf"] / m["gm"]))
    wm_gm, csf_gm = np.mean(ratios, axis=0)
    assert wm_gm == pytest.approx(mni["wm_gm"], abs=0.12), (wm_gm, mni["wm_gm"])
    assert csf_gm == pytest.approx(mni["csf_gm"], abs=0.15), (csf_gm, mni["csf_gm"])


def test_grey_matter_share_and_brain_size_match_an_adult_brain(mni):
    for size in (DEMO_SIZE, (240, 240, 155)):
        tissue, vox_per_mm = synthetic.make_anatomy(np.random.default_rng(7), size)
        grey = np.isin(tissue, (synthetic.GM, synthetic.DEEP_GM)).sum()
        share = grey / (grey + (tissue == synthetic.WM).sum())
        assert share == pytest.approx(mni["gm_share"], abs=0.08), (size, share, mni["gm_share"])
        extent_mm = [(a.max() - a.min() + 1) / v for a, v in zip(np.nonzero(tissue), vox_per_mm)]
        # left-right and front-back within 10% of the template's; top-bottom shorter (the template reaches further
        # down the brainstem than a BraTS volume's 155 slices keep)
        assert extent_mm[0] == pytest.approx(mni["extent"][0], rel=0.1), (size, extent_mm, mni["extent"])
        assert extent_mm[1] == pytest.approx(mni["extent"][1], rel=0.1), (size, extent_mm, mni["extent"])
        assert 0.75 * mni["extent"][2] < extent_mm[2] <= size[2] / vox_per_mm[2]


def test_each_modality_orders_tissues_as_clinical_mri():
    _, displaced, label, images, _ = twin(1)
    t1c, t1, t2, flair = (medians(images[m], displaced, label) for m in range(4))
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t2["csf"] > t2["gm"] > t2["wm"]
    assert flair["gm"] > flair["wm"] > flair["csf"]  # fluid suppressed
    assert flair["edema"] > max(flair[t] for t in ("wm", "gm", "deep_gm", "csf"))  # oedema: brightest on FLAIR
    assert t1c["enhancing"] > 1.3 * t1c["wm"]
    assert t1c["necrosis"] < t1c["gm"] and t2["necrosis"] > t2["gm"]


def test_the_tumour_displaces_anatomy_inside_a_fixed_outline():
    rng = np.random.default_rng(2)
    tissue, vox_per_mm = synthetic.make_anatomy(rng, DEMO_SIZE)
    displaced, label, source = synthetic.place_tumour(rng, tissue, vox_per_mm)
    np.testing.assert_array_equal(displaced > 0, tissue > 0)  # the skull does not move
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in DEMO_SIZE], indexing="ij"))
    shift = np.sqrt(((source - grid) ** 2).sum(0))  # voxels between where anatomy was and where it is
    core = np.isin(label, (1, 3))
    around = ndimage.binary_dilation(core, iterations=2) & ~core
    surface = (tissue > 0) & ~ndimage.binary_erosion(tissue > 0) & ndimage.binary_dilation(core, iterations=8)
    assert surface.sum() > 20  # this case's tumour lies near the surface
    assert shift[around].mean() > 0.5  # pushed outwards by the core
    assert shift[surface].mean() < shift[around].mean() / 4  # fading to (almost) nothing at the brain's surface nearby
    # anatomy next to the core came from nearer its centre
    centre = np.argwhere(core).mean(0)[:, None]
    pts = np.argwhere(around).T
    assert (np.linalg.norm(source[:, around] - centre, axis=0) < np.linalg.norm(pts - centre, axis=0)).mean() > 0.9
    # oedema spreads in white matter and deep grey matter, not in the cortex or CSF
    assert set(np.unique(displaced[label == 2]).tolist()) <= {synthetic.WM, synthetic.DEEP_GM}


def test_some_cases_have_no_enhancing_tumour():
    _, _, label, _, _ = twin(3, enhancing=False)
    assert (label == 1).any() and not (label == 3).any()
