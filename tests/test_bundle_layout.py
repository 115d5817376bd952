"""Every bundle follows the MONAI bundle layout that `monai.bundle` and MONAI Label rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if p.is_dir() and (p / "configs").is_dir())
TASK_WORDS = ("classification", "segmentation", "detection")
# bundle names of the MONAI model zoo for these tasks: MONAI Label would download those instead of ours
MODEL_ZOO_NAMES = {
    "brats_mri_segmentation",
    "brats_mri_axial_slices_generative_diffusion",
    "lung_nodule_ct_detection",
    "cxr_image_classification",
    "spleen_ct_segmentation",
    "wholeBody_ct_segmentation",
    "swin_unetr_btcv_segmentation",
}
REQUIRED_FILES = [
    "LICENSE",  # the model zoo's ci/verify_bundle.py requires it in the bundle root
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
    "scripts/__init__.py",
    "configs/demo_spec.json",
]
META_FIELDS = [
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
]


def test_there_are_bundles() -> None:
    assert BUNDLES, "no bundle under bundles/"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_name_tells_monai_label_the_task(bundle: Path) -> None:
    assert sum(word in bundle.name for word in TASK_WORDS) == 1, bundle.name
    assert bundle.name not in MODEL_ZOO_NAMES


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_required_files(bundle: Path) -> None:
    missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    assert not missing, f"{bundle.name} lacks {missing}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_configs_are_4_space_json_with_expected_ids(bundle: Path) -> None:
    for path in sorted((bundle / "configs").glob("*.json")):
        text = path.read_text()
        data = json.loads(text)  # a syntax error names the file in the traceback
        assert text == json.dumps(data, indent=4, ensure_ascii=False) + "\n", f"{path} is not 4-space JSON"
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert not [f for f in META_FIELDS if f not in meta], meta.keys()
    fmt = meta["network_data_format"]
    assert "image" in fmt["inputs"] and fmt["outputs"], fmt
    train = json.loads((bundle / "configs/train.json").read_text())
    for key in ("bundle_root", "device", "dataset_dir", "training", "network_def"):
        assert key in train, f"{bundle.name}/configs/train.json lacks '{key}'"
    infer = json.loads((bundle / "configs/inference.json").read_text())
    for key in ("bundle_root", "device", "dataset_dir", "dataset", "evaluator", "network_def", "inferer"):
        assert key in infer, f"{bundle.name}/configs/inference.json lacks '{key}'"
