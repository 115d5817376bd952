"""benchmarks/twin_transfer.py builds BraTS cases on the real MNI152 brain: they must be in the orientation and
scale of the twin the model learnt from, with the template's own T1, or the transfer figure measures a mix-up."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import twin_transfer

SIZE = (96, 96, 64)


@pytest.fixture(scope="module")
def setup():
    return (twin_transfer.synthetic_module(), *twin_transfer.template_on_grid(SIZE))


def back_of_lowest_slices(brain: np.ndarray) -> float:
    """Mean front-to-back position (0 front, 1 back) of the brain in its lowest fifth: the cerebellum lies at the
    back of the head, so this is well above 0.5 when axis 1 runs front to back as in BraTS volumes."""
    idx = np.argwhere(brain)
    low = idx[idx[:, 2] < idx[:, 2].min() + 0.2 * np.ptp(idx[:, 2])]
    front, back = idx[:, 1].min(), idx[:, 1].max()
    return float((low[:, 1].mean() - front) / (back - front))


def test_template_and_twin_share_orientation_and_size(setup):
    synthetic, vox_per_mm, grid = setup
    mni_brain = grid["t1"] > 5
    tissue, _ = synthetic.make_anatomy(np.random.default_rng(0), SIZE)
    assert back_of_lowest_slices(mni_brain) > 0.6
    assert back_of_lowest_slices(tissue > 0) > 0.6
    # the same brain size on the grid: within 10 % left-right and front-back; top-bottom the template reaches further
    # down the brainstem (it fills all 64 slices here), the twin stops earlier, as BraTS volumes often do
    extents = [(np.ptp(np.nonzero(mni_brain)[a]), np.ptp(np.nonzero(tissue > 0)[a])) for a in range(3)]
    for mni_extent, twin_extent in extents[:2]:
        assert twin_extent == pytest.approx(mni_extent, rel=0.1), extents
    assert 0.8 * extents[2][0] <= extents[2][1] <= extents[2][0], extents


def test_cases_keep_the_templates_t1_and_paint_a_tumour(setup):
    synthetic, vox_per_mm, grid = setup
    images, label = twin_transfer.make_case(synthetic, np.random.default_rng(1), grid, vox_per_mm, True)
    t1 = images[synthetic.MODALITIES.index("t1")]
    normal = (label == 0) & (grid["t1"] > 5)
    # away from the tumour (whose mass effect moves anatomy) the T1 is the template's, up to bias field and noise
    far = normal & (np.abs(np.argwhere(label > 0).mean(0)[0] - np.arange(SIZE[0]))[:, None, None] > 30)
    corr = np.corrcoef(t1[far], grid["t1"][far])[0, 1]
    assert corr > 0.9, corr
    assert {1, 2, 3} <= set(np.unique(label).tolist())
    assert (images[:, grid["t1"] <= 5] == 0).all()  # skull-stripped: nothing outside the template's brain


def test_bundle_docs_quote_the_measured_transfer():
    """The BraTS README's before/after figures are the ones in benchmarks/results/twin_transfer.json."""
    import json

    root = twin_transfer.ROOT
    results = json.loads((root / "benchmarks" / "results" / "twin_transfer.json").read_text())["results"]
    readme = (root / "bundles" / "brats_segmentation" / "docs" / "README.md").read_text()
    text = " ".join(readme.split())
    for label in ("before", "after"):
        scores = results[label]["scores"]
        assert scores["n_cases"] == 20
        quoted = " / ".join(f"{scores[f'dice_{r}']:.3f}" for r in ("TC", "WT", "ET"))
        assert quoted in text, (label, quoted)
