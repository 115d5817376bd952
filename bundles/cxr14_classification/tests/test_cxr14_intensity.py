"""Intensity normalisation: the network input must not depend on the window or bit depth a file was exported with.

The issue: a CR radiograph as 15-bit MONOCHROME1 DICOM (full-range VOI window) and as an 8-bit PNG export decoded
to the same picture under two linear windows (correlation 0.9999); the fixed mean/std passed the difference on
(0.30 std at the network input) and demo-trained weights gave probabilities up to 0.19 apart. The configs now scale
each image between its own 1st and 99th percentiles (MONAI ``ScaleIntensityRangePercentilesd``) before the mean/std.
Here one synthetic radiograph is written in eight encodings and pydicom's CT_small.dcm (its values fill 3% of the
16-bit range) is compared with an 8-bit PNG export; the preprocessing is the configs' own (parsed, not copied).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from scripts.io import read_cxr
from scripts.synthetic import _Anatomy, render, write_dicom

BUNDLE = Path(__file__).resolve().parents[1]
# (config files, id of the preprocessing): inference (also what MONAI Label runs), validation/evaluation, the demo
PIPELINES = {
    "inference": (["inference.json"], "preprocessing"),
    "validate": (["train.json"], "validate#preprocessing"),
    "inference+demo": (["inference.json", "demo.json"], "preprocessing"),
}
INPUT_TOL = 0.05  # network-input units are intensity_std units
PRED_TOL = 0.02


def _parser(files: list[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / f) for f in files])
    return parser


@pytest.fixture(scope="module")
def encodings(tmp_path_factory) -> dict[str, str]:
    """One radiograph, eight files: PNG 8/16-bit and DICOM 8/12/15/16-bit, MONOCHROME1/2, rescale, windows.

    Every file decodes to ``a + b * picture`` with its own a, b (fractions of the [0, 1] decoded range)."""
    rng = np.random.default_rng(3)
    picture = render({"Cardiomegaly", "Effusion"}, _Anatomy(rng), 256, rng)
    out = tmp_path_factory.mktemp("windows")
    Image.fromarray(np.round(picture * 255).astype(np.uint8), mode="L").save(out / "png8.png")
    Image.fromarray(np.round((0.1 + 0.65 * picture) * 65535).astype(np.uint16)).save(out / "png16_window.png")
    write_dicom(picture, out / "dicom8.dcm", bits=8, value_range=(0.05, 0.9))
    write_dicom(picture, out / "dicom12_m2.dcm", bits=12)
    write_dicom(picture, out / "dicom12_m1_rescale.dcm", bits=12, monochrome1=True, slope=2.0, intercept=-1024.0,
                value_range=(0.2, 0.8))  # fmt: skip
    # the file: 15-bit MONOCHROME1 whose full-range VOI window is wider than the picture
    write_dicom(picture, out / "dicom15_m1_fullwindow.dcm", bits=15, monochrome1=True, window=True,
                value_range=(0.1, 0.6))  # fmt: skip
    write_dicom(picture, out / "dicom16_m2_fullwindow.dcm", bits=16, window=True, value_range=(0.3, 0.7))
    # a VOI window narrower than the stored range but wider than the picture: DICOM 'LINEAR' stretch, no clipping
    path = write_dicom(picture, out / "dicom16_voi_stretch.dcm", bits=16, value_range=(0.25, 0.5))
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = round(0.375 * 65535), round(0.3 * 65535)
    ds.save_as(path)
    return {p.stem: str(p) for p in sorted(out.iterdir())}


def _inputs(pipeline: str, files: dict[str, str]) -> dict[str, torch.Tensor]:
    configs, key = PIPELINES[pipeline]
    preprocessing = _parser(configs).get_parsed_content(key)
    label = np.zeros(14, np.float32)  # training/validation transforms also type the label
    return {name: torch.as_tensor(preprocessing({"image": p, "label": label})["image"]) for name, p in files.items()}


@functools.cache
def _seeded_network(configs: tuple[str, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    return _parser(list(configs)).get_parsed_content("network_def").eval()


def _predictions(configs: list[str], inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    network = _seeded_network(tuple(configs))
    with torch.no_grad():
        return {name: torch.sigmoid(network(x[None].float()))[0].numpy() for name, x in inputs.items()}


def test_encodings_differ_by_a_linear_window(encodings):
    """The premise: decoded, the files are one picture under different linear windows (not just quantisation)."""
    decoded = {name: read_cxr(path)[0].ravel().astype(np.float64) for name, path in encodings.items()}
    ref = decoded["png8"]
    slopes = {name: np.polyfit(ref, x, 1)[0] for name, x in decoded.items()}  # decoded = a + b * png8
    assert min(slopes.values()) < 0.45 and sorted(slopes.values())[-2] == pytest.approx(1.0, abs=1e-3), slopes
    for name, x in decoded.items():
        assert np.corrcoef(x, ref)[0, 1] > 0.999, name


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_network_input_does_not_depend_on_window_or_bit_depth(encodings, pipeline):
    inputs = _inputs(pipeline, encodings)
    ref = inputs["png8"]
    diffs = {name: float((x - ref).abs().max()) for name, x in inputs.items()}
    assert max(diffs.values()) < INPUT_TOL, diffs


@pytest.mark.parametrize("pipeline", ["inference", "inference+demo"])
def test_seeded_network_predictions_do_not_depend_on_window(encodings, pipeline):
    inputs = _inputs(pipeline, encodings)
    probs = _predictions(PIPELINES[pipeline][0], inputs)
    diffs = {name: float(np.abs(p - probs["png8"]).max()) for name, p in probs.items()}
    assert max(diffs.values()) < PRED_TOL, diffs


def test_pydicom_ct_small_against_its_png_export(tmp_path):
    """A scanner's file (pydicom.data CT_small.dcm, 16-bit signed, rescale, values in 3% of the stored range) and
    an 8-bit PNG of it windowed to its own values: same network input and prediction."""
    from pydicom.data import get_testdata_file

    dicom = get_testdata_file("CT_small.dcm")
    decoded = read_cxr(dicom)[0].astype(np.float64)
    export = (decoded - decoded.min()) / (decoded.max() - decoded.min())
    Image.fromarray(np.round(export * 255).astype(np.uint8), mode="L").save(tmp_path / "ct_small.png")
    files = {"dicom": dicom, "png8": str(tmp_path / "ct_small.png")}
    inputs = _inputs("inference", files)
    assert float((inputs["dicom"] - inputs["png8"]).abs().max()) < INPUT_TOL
    probs = _predictions(PIPELINES["inference"][0], inputs)
    assert float(np.abs(probs["dicom"] - probs["png8"]).max()) < PRED_TOL


def test_training_evaluation_and_inference_normalise_alike():
    """Training (before its random transforms), validation/evaluation and inference run the same intensity steps
    with the same values; demo.json changes none of them."""
    train, inference = _parser(["train.json"]), _parser(["inference.json"])

    def steps(parser: ConfigParser, key: str) -> list[tuple]:
        compose = parser.get_parsed_content(key)
        return [
            (type(t).__name__, getattr(t, "scaler", None) and vars(t.scaler), getattr(t, "normalizer", None)
             and (t.normalizer.subtrahend, t.normalizer.divisor))
            for t in compose.transforms
        ]  # fmt: skip

    validate = steps(train, "validate#preprocessing")
    names = [s[0] for s in validate]
    assert names[names.index("Resized") + 1 : names.index("NormalizeIntensityd") + 1] == [
        "ScaleIntensityRangePercentilesd",
        "NormalizeIntensityd",
    ]
    assert steps(train, "train#preprocessing")[: len(validate)] == validate
    assert steps(inference, "preprocessing") == validate
    demo = (BUNDLE / "configs" / "demo.json").read_text()
    assert "intensity" not in demo and "preprocessing" not in demo
