"""The MONAI model zoo's own bundle checks, offline, on every bundle as ``make pack`` ships it.

Each bundle is packed with ``tools/pack_bundle.py`` into a temporary folder and unzipped to ``models/<name>``
(the model zoo's layout); seeded random weights are written to ``models/model.pt`` the way the zoo writes fake
weights; then one subprocess per bundle, with the unzipped bundle as working directory and first on ``sys.path``
(as the zoo does) and no ``PYTHONPATH`` (the bundle brings its own ``common``), runs the checks below.

Mirrored from ``ci/verify_bundle.py`` of Project-MONAI/model-zoo (``verify(bundle, mode="full")``, read at
commit dfae206df112837d817e78d3727c9f32b3b52e82), in its order:

- ``directory`` (``verify_bundle_directory``): ``configs/metadata.json`` and ``LICENSE`` (exactly that name, in the
  bundle root) exist; the preferred files ``models/model.pt`` and ``configs/inference.json`` too. The zoo first
  downloads ``large_files.yml``'s entries; here the weights are written instead (no network, no published URL).
- ``version_changelog`` (``verify_version_changes``): ``version`` and ``changelog`` exist and ``version`` is a key of
  ``changelog``. Not mirrored: "this version is already in the zoo's model_info.json" (the zoo's own registry).
- ``metadata_schema`` (``verify_metadata_format``): ``monai.bundle.verify_metadata`` validates ``metadata.json``
  (jsonschema) against the schema it cites. The zoo downloads that schema to ``eval/schema.json``
  (``ci/prepare_schema.py``); here the vendored copy of the cited schema (``SCHEMA_COPIES``: only
  ``tests/data/meta_schema_20240725.json``) is put there, and ``verify_metadata`` finds the file and downloads
  nothing. A bundle citing a schema without a vendored copy fails this check.
- ``inference_properties`` (``verify_bundle_properties``): MONAI's ``check_properties`` of the inference workflow
  (``create_workflow(workflow_type="inference", ...)``, ``InferProperties`` + ``MetaProperties``, as the zoo sets
  them) returns no missing or wrongly referenced property. The zoo runs it only for the apps named in
  ``supported_apps`` that have a ``bundle_properties.py`` in the zoo (none for these bundles, so the zoo skips it);
  here it always runs, with ``dataset_dir`` set to a one-case synthetic input, because checking a property
  instantiates it and the ``dataset`` reads its folder.
- ``net_in_out`` (``verify_data_shape``): ``monai.bundle.verify_net_in_out`` builds the network from
  ``configs/inference.json`` (full size; random weights after ``torch.manual_seed(0)``, CPU, ``n = p = 1``), feeds
  ``rand(1, inputs.image.num_channels, *inputs.image.spatial_shape)`` and checks ``outputs.pred``'s channel count
  and dtype. The zoo uses ``network_def``; RetinaNet's ``network_def`` returns a dict (the zoo lists its own
  lung_nodule_ct_detection in ``exclude_verify_shape_list``), so LUNA16 is checked with ``network_logits_def``, the
  same network returning its anchor logits as one tensor (``NET_IN_OUT_ID``).
- ``torchscript`` (``verify_torchscript``): ``monai.bundle.ckpt_export`` of ``network_def`` with
  ``models/model.pt``, no ``key_in_ckpt`` (as the zoo calls it), to ``models/verify_model.ts``; here the exported
  file is also loaded with ``torch.jit.load``. The weights are a bare state dict, as the zoo's
  ``_produce_fake_weights`` writes them.

Also mirrored: ``ci/get_bundle_requirements.py`` turns ``required_packages_version`` into ``name==version`` lines
for pip, so every version must be a non-empty version (``test_metadata_fields_of_the_schema``). Not mirrored:
the TensorRT / ONNX-TensorRT exports (``ci/verify_tensorrt.py``, GPU only) and the zoo's unit-test runners.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pack_bundle", ROOT / "tools" / "pack_bundle.py")
pack_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pack_bundle)

BUNDLE_NAMES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
# the newest general metadata schema the model zoo's bundles cite, in the URL form they use
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_COPY = ROOT / "tests" / "data" / "meta_schema_20240725.json"  # provenance: tests/data/README.md
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"
SCHEMA_COPIES = {SCHEMA_URL: SCHEMA_COPY}  # schema URL -> vendored file, what the zoo would download
NET_IN_OUT_ID = {"luna16_detection": "network_logits_def"}  # default: network_def (as the zoo)
CHECKS = ["directory", "version_changelog", "metadata_schema", "inference_properties", "net_in_out", "torchscript"]
TIMEOUT = HANG_GUARD


def _meta(name: str) -> dict:
    return json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())


def _requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    return pins


def _schema() -> dict:
    """The vendored schema, checked to be byte for byte the file whose provenance tests/data/README.md gives."""
    assert SCHEMA_COPY.name == SCHEMA_URL.rsplit("/", 1)[1]
    data = SCHEMA_COPY.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256, f"{SCHEMA_COPY} differs from the published schema"
    return json.loads(data)


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_metadata_fields_of_the_schema(name: str) -> None:
    """One schema for every bundle, every field it requires filled (offline: read from the vendored copy)."""
    meta = _meta(name)
    schema = _schema()
    assert meta.get("schema") == SCHEMA_URL, f"{name} cites {meta.get('schema')!r}, not {SCHEMA_URL}"
    missing = [f for f in schema["required"] if meta.get(f) in (None, "")]
    assert not missing, f"{name}/configs/metadata.json lacks the schema's required fields {missing}"
    tensor_fields = schema["$defs"]["tensor"]["required"]
    for part in ("inputs", "outputs"):
        for key, tensor in meta["network_data_format"][part].items():
            lacking = [f for f in tensor_fields if f not in tensor]
            assert not lacking, f"{name}: network_data_format.{part}.{key} lacks {lacking}"
    # the zoo installs `name==version` for each entry (ci/get_bundle_requirements.py): versions must be real pins
    pins = _requirement_pins()
    for package, version in meta["required_packages_version"].items():
        assert isinstance(version, str) and version.strip(), f"{name}: required_packages_version[{package!r}] empty"
        if package.lower() in pins:
            assert version == pins[package.lower()], f"{name}: {package} {version} != requirements.txt"


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_bundle_license_is_the_repository_license(name: str) -> None:
    assert (ROOT / "bundles" / name / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


_CHECK = r"""
import json, os, shutil, sys, time, traceback
from pathlib import Path

bundle = Path.cwd().resolve()
sys.path.insert(0, str(bundle))  # as ci/verify_bundle.py: the bundle's own `scripts` and `common`
import torch
from monai.bundle import ConfigParser, ckpt_export, create_workflow, verify_metadata, verify_net_in_out

name, schema_copies, net_id, inputs = sys.argv[1:5]
meta_file, infer_file = str(bundle / "configs/metadata.json"), str(bundle / "configs/inference.json")
results = {}


def check(key):
    def run(fn):
        t0 = time.perf_counter()
        try:
            fn()
            results[key] = {"ok": True, "error": ""}
        except BaseException as e:  # record and go on, as one report per check
            results[key] = {"ok": False, "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"}
        results[key]["seconds"] = round(time.perf_counter() - t0, 2)
    return run


def make_input(folder):
    folder.mkdir(parents=True)
    if name == "brats_segmentation":
        from scripts.synthetic import generate
        generate(folder, n_cases=1, size=(24, 24, 16))
    elif name == "cxr14_classification":
        from PIL import Image
        import numpy as np
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / "x.png")
    elif name == "luna16_detection":
        from scripts.synthetic import generate
        generate(folder, n_scans=1, size=(32, 32, 16), n_subsets=1)
    else:
        raise NotImplementedError(f"no synthetic inference input for {name}: add one to tests/test_zoo_checks.py")
    return folder


# weights as the zoo's _produce_fake_weights writes them: network_def's bare state dict (seeded here)
parser = ConfigParser()
parser.read_config(f=infer_file)
parser.read_meta(f=meta_file)
parser["bundle_root"] = str(bundle)
torch.manual_seed(0)
(bundle / "models").mkdir(exist_ok=True)
torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models/model.pt")


@check("directory")
def _():
    for f in ["configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"]:
        assert (bundle / f).is_file(), f"necessary file {f} is not existing."


@check("version_changelog")
def _():
    meta = json.loads(Path(meta_file).read_text())
    assert "version" in meta and "changelog" in meta, sorted(meta)
    assert meta["version"] in meta["changelog"], f"version {meta['version']} is missing in 'changelog'"


@check("metadata_schema")
def _():
    url = json.loads(Path(meta_file).read_text())["schema"]
    copies = json.loads(schema_copies)
    if url not in copies:
        raise FileNotFoundError(f"metadata.json cites {url}: no offline copy (have {sorted(copies)})")
    (bundle / "eval").mkdir(exist_ok=True)
    shutil.copyfile(copies[url], bundle / "eval/schema.json")  # where ci/prepare_schema.py downloads it to
    verify_metadata(meta_file=meta_file, filepath=str(bundle / "eval/schema.json"))


@check("inference_properties")
def _():
    workflow = create_workflow(
        workflow_type="inference", bundle_root=str(bundle), config_file=infer_file, meta_file=meta_file,
        logging_file=str(bundle / "configs/logging.conf"), dataset_dir=str(make_input(Path(inputs))),
    )
    missing = workflow.check_properties()
    assert missing == [], f"check properties for workflow failed: {missing}"


@check("net_in_out")
def _():
    torch.manual_seed(0)
    verify_net_in_out(net_id=net_id, meta_file=meta_file, config_file=infer_file, bundle_root=str(bundle),
                      device="cpu")


@check("torchscript")
def _():
    ckpt_export(net_id="network_def", filepath=str(bundle / "models/verify_model.ts"),
                ckpt_file=str(bundle / "models/model.pt"), meta_file=meta_file, config_file=infer_file,
                bundle_root=str(bundle))
    torch.jit.load(str(bundle / "models/verify_model.ts"))


print("ZOO_CHECKS " + json.dumps(results))
"""


@pytest.fixture(scope="module", params=BUNDLE_NAMES)
def zoo_results(request, tmp_path_factory) -> tuple[str, dict]:
    """Pack, unzip into ``models/<name>``, run every check in one subprocess; ``{check: {ok, error, seconds}}``."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    zip_path = pack_bundle.pack_bundle(ROOT / "bundles" / name, tmp / "dist")
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp / "models")
    bundle = tmp / "models" / name
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", BUNDLES_PROGRESS="0")
    _schema()  # the vendored copy is the published file
    copies = json.dumps({url: str(path) for url, path in SCHEMA_COPIES.items()})
    args = [name, copies, NET_IN_OUT_ID.get(name, "network_def"), str(tmp / "inputs")]
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK, *args], cwd=bundle, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ZOO_CHECKS ")]
    assert proc.returncode == 0 and lines, f"{name}: check script failed\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}"
    results = json.loads(lines[-1][len("ZOO_CHECKS ") :])
    print(f"{name}: " + ", ".join(f"{k} {v['seconds']} s" for k, v in results.items()))
    return name, results


@pytest.mark.parametrize("check", CHECKS)
def test_model_zoo_check(zoo_results: tuple[str, dict], check: str) -> None:
    name, results = zoo_results
    assert check in results, f"{name}: {check} did not run"
    assert results[check]["ok"], f"{name}: model-zoo check '{check}' fails:\n{results[check]['error']}"
