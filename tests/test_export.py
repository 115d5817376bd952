"""Export parity: every bundle's ``network_def`` exported with MONAI's own commands gives the eager network's output.

For each bundle with ``configs/inference.json`` and ``configs/metadata.json``: build ``network_def`` with seeded
random weights, save ``{"model": state_dict}``, run ``python -m monai.bundle ckpt_export`` (TorchScript) and
``python -m monai.bundle onnx_export`` (legacy TorchScript-tracing exporter, ``dynamo=False``) from the bundle
directory, then load the exported files (``torch.jit.load``, onnxruntime) and compare them with the eager network
on one input shaped from ``network_data_format.inputs.image`` (spatial size reduced where the metadata allows).

Tolerance (fp32, CPU): max |exported - eager| <= RTOL * max|eager| + ATOL for every output tensor.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(
    p
    for p in (ROOT / "bundles").iterdir()
    if (p / "configs/inference.json").is_file() and (p / "configs/metadata.json").is_file()
)
RTOL = 1e-4  # relative to the output scale (max |eager output|)
ATOL = 1e-6  # floor for outputs that are all close to 0
SEED = 0
# smallest n for "k*n" spatial sizes in the metadata that every bundle network accepts (deepest feature map >= 1)
N_FOR_SHAPE = 2
EXPORT_TIMEOUT = HANG_GUARD


def _activate_bundle(bundle: Path) -> None:
    """The root conftest.activate_bundle (under --import-mode=importlib the root conftest is not importable by name)."""
    spec = importlib.util.spec_from_file_location("_root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    module.activate_bundle(bundle)


def _input_shape(meta: dict, n: int = N_FOR_SHAPE) -> list[int]:
    image = meta["network_data_format"]["inputs"]["image"]
    spatial = []
    for dim in image["spatial_shape"]:
        if isinstance(dim, int):
            spatial.append(dim)
        else:  # "8*n", "16*n", "n", "2**p" ...
            expr = str(dim).replace("^", "**")
            if not re.fullmatch(r"[0-9np*+ ]+", expr):
                raise ValueError(f"cannot interpret spatial_shape entry {dim!r}")
            spatial.append(int(eval(expr, {"__builtins__": {}}, {"n": n, "p": n})))  # noqa: S307 - digits/n/p/*/+ only
    return [1, int(image["num_channels"]), *spatial]


def _flatten(out, prefix: str = "out") -> list[tuple[str, torch.Tensor]]:
    """Outputs as (path, tensor) pairs in a fixed order: tensors, lists/tuples of them, dicts of those (RetinaNet)."""
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, dict):
        return [item for key in out for item in _flatten(out[key], f"{prefix}[{key!r}]")]
    if isinstance(out, (list, tuple)):
        return [item for i, o in enumerate(out) for item in _flatten(o, f"{prefix}[{i}]")]
    raise TypeError(f"unexpected output type {type(out)} at {prefix}")


def _structure(out):
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return {k: _structure(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [_structure(o) for o in out]
    raise TypeError(type(out))


def assert_outputs_match(reference, exported, what: str, rtol: float = RTOL, atol: float = ATOL) -> float:
    """Same structure, shapes and values within ``rtol * max|reference| + atol``; returns the max abs difference."""
    ref, got = _flatten(reference), _flatten(exported)
    assert len(ref) == len(got), f"{what}: {len(got)} output tensors, eager gives {len(ref)}"
    worst = 0.0
    for (name, r), (_, g) in zip(ref, got):
        g = torch.as_tensor(g)
        assert tuple(g.shape) == tuple(r.shape), f"{what}: {name} shape {tuple(g.shape)} != eager {tuple(r.shape)}"
        assert g.dtype == r.dtype, f"{what}: {name} dtype {g.dtype} != eager {r.dtype}"
        r, g = r.detach().double(), g.detach().double()
        assert torch.isfinite(g).all(), f"{what}: {name} has non-finite values"
        tol = rtol * float(r.abs().max()) + atol
        diff = float((g - r).abs().max())
        assert diff <= tol, f"{what}: {name} max abs diff {diff:.3g} > tolerance {tol:.3g}"
        worst = max(worst, diff)
    return worst


def _run_monai_bundle(bundle: Path, args: list[str]) -> float:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"monai.bundle {args[0]} failed in {bundle.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return time.perf_counter() - t0


class Exported:
    def __init__(self, bundle: Path, tmp: Path) -> None:
        from monai.bundle import ConfigParser

        self.bundle = bundle
        self.tmp = tmp
        self.meta = json.loads((bundle / "configs/metadata.json").read_text())
        self.shape = _input_shape(self.meta)
        _activate_bundle(bundle)
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs/inference.json"))
        parser["bundle_root"] = str(bundle)
        torch.manual_seed(SEED)
        self.net = parser.get_parsed_content("network_def", instantiate=True).eval()
        # random BatchNorm statistics too, so that eval-mode normalisation is really exercised
        g = torch.Generator().manual_seed(SEED)
        for m in self.net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1.0 + 0.1 * torch.rand(m.running_var.shape, generator=g))
        self.ckpt = tmp / "model.pt"
        torch.save({"model": self.net.state_dict()}, self.ckpt)
        self.x = torch.rand(self.shape, generator=torch.Generator().manual_seed(SEED + 1))
        with torch.no_grad():
            self.eager = self.net(self.x)
        self.common = [
            "--ckpt_file",
            str(self.ckpt),
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
            "--key_in_ckpt",
            "model",
        ]


@pytest.fixture(scope="module", params=BUNDLES, ids=[b.name for b in BUNDLES])
def exported(request, tmp_path_factory) -> Exported:
    return Exported(request.param, tmp_path_factory.mktemp(request.param.name))


def test_torchscript_export_matches_eager(exported: Exported) -> None:
    ts_file = exported.tmp / "model.ts"
    seconds = _run_monai_bundle(
        exported.bundle,
        [
            "ckpt_export",
            "network_def",
            "--filepath",
            str(ts_file),
            *exported.common,
            "--bundle_root",
            str(exported.bundle),
        ],
    )
    extra = {"metadata.json": "", "inference.json": ""}
    ts = torch.jit.load(str(ts_file), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == exported.meta["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    assert not ts.training, "exported TorchScript module must be in eval mode"
    with torch.no_grad():
        out = ts(exported.x)
    assert _structure(out) == _structure(exported.eager)
    diff = assert_outputs_match(exported.eager, out, f"{exported.bundle.name} TorchScript")
    print(f"{exported.bundle.name}: ckpt_export {seconds:.1f} s, input {exported.shape}, max abs diff {diff:.2g}")


def test_onnx_export_matches_eager(exported: Exported) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    onnx_file = exported.tmp / "model.onnx"
    seconds = _run_monai_bundle(
        exported.bundle,
        [
            "onnx_export",
            "network_def",
            "--filepath",
            str(onnx_file),
            *exported.common,
            "--use_trace",
            "True",
            "--input_shape",
            json.dumps(exported.shape).replace(" ", ""),
            "--converter_kwargs",
            "{'dynamo': False}",
        ],
    )
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert list(inp.shape) == exported.shape
    outs = sess.run(None, {inp.name: exported.x.numpy()})
    ref = _flatten(exported.eager)
    # ONNX flattens nested outputs (RetinaNet: dict of lists) in the order torch.onnx traced them
    assert len(outs) == len(ref), f"ONNX has {len(outs)} outputs, eager network gives {len(ref)}"
    diff = assert_outputs_match(
        [t for _, t in ref], [torch.from_numpy(np.asarray(o)) for o in outs], f"{exported.bundle.name} ONNX"
    )
    print(f"{exported.bundle.name}: onnx_export {seconds:.1f} s, input {exported.shape}, max abs diff {diff:.2g}")


def test_comparison_detects_differences() -> None:
    """The parity check itself can fail: a perturbation, a wrong shape or a missing output is reported."""
    ref = {"cls": [torch.ones(1, 3, 4), torch.zeros(1, 3, 2)], "box": [torch.full((1, 6, 4), 2.0)]}
    same = {k: [t.clone() for t in v] for k, v in ref.items()}
    assert assert_outputs_match(ref, same, "identical") == 0.0
    perturbed = {k: [t.clone() for t in v] for k, v in ref.items()}
    perturbed["box"][0][0, 0, 0] += 1e-2
    with pytest.raises(AssertionError, match="max abs diff"):
        assert_outputs_match(ref, perturbed, "perturbed")
    with pytest.raises(AssertionError, match="shape"):
        assert_outputs_match(torch.zeros(1, 3), torch.zeros(1, 4), "shape")
    with pytest.raises(AssertionError, match="output tensors"):
        assert_outputs_match(ref, {"cls": ref["cls"]}, "missing")
    assert _input_shape(
        {"network_data_format": {"inputs": {"image": {"num_channels": 4, "spatial_shape": ["8*n", "8*n", 16]}}}}
    ) == [1, 4, 16, 16, 16]
