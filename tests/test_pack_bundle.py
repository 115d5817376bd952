"""`make pack`: model-zoo zip layout, and the packed bundle loads and runs with MONAI's own bundle API."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pack_bundle", ROOT / "tools" / "pack_bundle.py")
pack_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pack_bundle)

BUNDLE_NAMES = ["brats_segmentation", "cxr14_classification", "luna16_detection"]
COPY_IGNORE = shutil.ignore_patterns("models", "eval", "data", "runs", "tests", "__pycache__", "*.pyc")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the bundle must bring its own `common`
    return dict(env, OMP_NUM_THREADS="1", BUNDLES_PROGRESS="0")


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_pack_layout(name, tmp_path):
    out = pack_bundle.pack_bundle(ROOT / "bundles" / name, tmp_path / "dist")
    assert out == tmp_path / "dist" / f"{name}_v{pack_bundle.bundle_version(ROOT / 'bundles' / name)}.zip"
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [out.name]  # no temporary file left behind
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        large = yaml.safe_load(zf.read(f"{name}/large_files.yml"))
    assert all(n.startswith(f"{name}/") for n in names), names
    rel = {n[len(name) + 1 :] for n in names}
    for required in [
        "LICENSE",
        "configs/metadata.json",
        "configs/train.json",
        "configs/inference.json",
        "configs/logging.conf",
        "docs/README.md",
        "scripts/__init__.py",
        "common/__init__.py",
        "common/amp.py",
        "common/progress.py",
        "large_files.yml",
    ]:
        assert required in rel, required
    assert not any(r.startswith(("models/", "tests/", "eval/", "data/")) or "__pycache__" in r for r in rel), rel
    assert large["large_files"][0]["path"] == "models/model.pt"
    # same inputs, same bytes
    again = pack_bundle.pack_bundle(ROOT / "bundles" / name, tmp_path / "again")
    assert again.read_bytes() == out.read_bytes()


def test_with_weights_needs_the_file(tmp_path):
    bundle = tmp_path / "cxr14_classification"
    shutil.copytree(ROOT / "bundles" / "cxr14_classification", bundle, ignore=COPY_IGNORE)
    with pytest.raises(pack_bundle.PackError, match=r"models/model.pt.*does not exist"):
        pack_bundle.pack_bundle(bundle, tmp_path / "dist", with_weights=True)
    (bundle / "LICENSE").unlink()
    with pytest.raises(pack_bundle.PackError, match=r"LICENSE: missing; the model zoo requires it"):
        pack_bundle.pack_bundle(bundle, tmp_path / "dist")
    (bundle / "configs" / "metadata.json").write_text("{}")
    with pytest.raises(pack_bundle.PackError, match=r"metadata.json: no readable 'version'"):
        pack_bundle.pack_bundle(bundle, tmp_path / "dist")


_LOAD_AND_INFER = """
import sys
from pathlib import Path

import torch
from monai.bundle import load, run

import common, scripts

here = Path.cwd().resolve()
for mod in (common, scripts):  # the copies inside the unzipped bundle, not the repository's
    assert Path(mod.__file__).resolve().is_relative_to(here), mod.__file__
name, bundle_dir, images = sys.argv[1:4]
net = load(name=name, bundle_dir=bundle_dir, workflow_type="inference", key_in_ckpt="model",
           net_override={"arch": "small"}, device="cpu")
saved = torch.load("models/model.pt", map_location="cpu", weights_only=True)["model"]
state = net.state_dict()
assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
run("run", config_file=["configs/inference.json", "configs/demo.json"], dataset_dir=images,
    image_size=64, num_workers=0)
print("LOADED", type(net).__name__)
"""

_RANDOM_WEIGHTS = """
import torch
from monai.bundle import ConfigParser

p = ConfigParser()
p.read_config(["configs/inference.json", "configs/demo.json"])
torch.manual_seed(0)
torch.save({"model": p.get_parsed_content("network_def").state_dict()}, "models/model.pt")
"""


def test_packed_bundle_loads_with_monai(tmp_path):
    """Pack CXR14 with (seeded random, small-arch) weights, fetch it with ``monai.bundle.download(url=file://)``,
    then in the extracted folder: ``monai.bundle.load`` the network with the weights and run inference."""
    from monai.bundle import download

    name = "cxr14_classification"
    bundle = tmp_path / "src" / name
    shutil.copytree(ROOT / "bundles" / name, bundle, ignore=COPY_IGNORE)
    (bundle / "models").mkdir()
    cmd = [sys.executable, "-c", _RANDOM_WEIGHTS]
    proc = subprocess.run(cmd, cwd=bundle, env=_env(), capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    zip_path = pack_bundle.pack_bundle(bundle, tmp_path / "dist", with_weights=True)

    extracted = tmp_path / "zoo"
    download(name=name, url=zip_path.as_uri(), bundle_dir=str(extracted), progress=False)
    root = extracted / name
    assert (root / "configs" / "metadata.json").is_file() and (root / "common" / "__init__.py").is_file()
    large = yaml.safe_load((root / "large_files.yml").read_text())["large_files"][0]
    assert large["hash_val"] == pack_bundle.md5sum(root / "models" / "model.pt")

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(images / f"x{i}.png")
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_INFER, name, str(extracted), str(images)],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED" in proc.stdout
    rows = (root / "eval" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("image,"), rows
