"""Where BraTS loses agreement in reduced precision: torch bf16 and NNCF int8 variants against torch fp32, with
trained weights, on one full BraTS window.

    python -m benchmarks.speed.brats_precision [--trained_weights work_dirs/demo/brats_segmentation/models/model.pt]

Why: the shipped bf16 path (torch autocast, ``common.amp``) gives ET Dice 0.98 against fp32 with trained weights
and the int8 lever of ``benchmarks/speed/brats.py`` (every convolution in int8) 0.92 (bar 0.99). This script
measures where that comes from by keeping parts of the network in fp32 (torch) or out of int8 (OpenVINO).
torch variants run the network as the bundle does (``common.amp.amp_settings("cpu")``: bf16 autocast and
channels-last where the CPU has native bf16), with the named modules or module types in fp32. OpenVINO variants
go through ``common.openvino.OpenVINONetwork`` with the calibration windows the shipped
``configs/inference_openvino_int8.json`` builds (the first 4 cases of the calibration folder, central 128^3
crops). All run the same input: the speed benchmark's timed synthetic case (240x240x155 at 1 mm), preprocessed
by ``configs/inference.json`` and zero-padded to the 240x240x160 window, i.e. the one window its sliding window
runs. Agreement: per-region Dice (TC/WT/ET channels, sigmoid > 0.5) against the torch fp32 network on that window.
Time: the fastest of ``--repeats`` interleaved calls per variant (compile and calibration reported apart).
Weights: the model ``make demo`` trains (init_filters 8); random weights put too many voxels at the threshold.
Writes ``benchmarks/results/brats_precision.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.speed import brats, harness

REGIONS = ("TC", "WT", "ET")
SEGRESNET_DECODER = ["up_layers", "up_samples", "conv_final"]


@dataclass(frozen=True)
class Variant:
    """One way of running the network. ``float_modules``: SegResNet attribute names kept in full precision (torch:
    fp32; OpenVINO int8: out of int8); ``float_types``: torch module class names (torch) or OpenVINO op types
    (NNCF's ignored scope) kept the same way."""

    runtime: str  # "torch" or "openvino"
    precision: str  # torch: "amp" (common.amp's choice); OpenVINO: "bf16" or "int8"
    what: str
    float_modules: list[str] = field(default_factory=list)
    float_types: list[str] = field(default_factory=list)


VARIANTS: dict[str, Variant] = {
    "torch_amp": Variant("torch", "amp", "torch bf16 autocast + channels-last (the shipped default)"),
    "torch_amp_last_fp32": Variant(
        "torch", "amp", "torch bf16, the last block (norm, act, 1x1 convolution) in fp32", ["conv_final"]
    ),
    "torch_amp_norm_fp32": Variant(
        "torch", "amp", "torch bf16, every GroupNorm and the last block in fp32", ["conv_final"], ["GroupNorm"]
    ),
    "bf16": Variant("openvino", "bf16", "OpenVINO bf16, no int8 (inference_openvino.json)"),
    "int8_all": Variant("openvino", "int8", "every convolution in int8 (version 0.3.1's int8 config)"),
    "int8_first_last_bf16": Variant(
        "openvino",
        "int8",
        "first and last convolutions in bf16 (inference_openvino_int8.json as shipped)",
        ["convInit", "conv_final"],
    ),
    "int8_decoder_bf16": Variant(
        "openvino", "int8", "first convolution and the decoder in bf16", ["convInit", *SEGRESNET_DECODER]
    ),
    "int8_first_last_norm_add_bf16": Variant(
        "openvino",
        "int8",
        "first and last convolutions in bf16, and no int8 inputs to GroupNorm, residual adds and upsampling",
        ["convInit", "conv_final"],
        ["GroupNormalization", "Add", "Interpolate"],
    ),
}


def _float32(module: Any) -> Any:
    """``module`` wrapped to run in fp32 inside an autocast region (its input cast up, autocast off)."""
    import torch

    class Float32(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False):
                return self.inner(x.float())

    return Float32(module)


def torch_engine(network: Any, variant: Variant) -> Any:
    """``network`` run as the bundle runs it on this CPU (``common.amp``), with the variant's parts in fp32."""
    import torch

    from common.amp import amp_settings

    types = tuple(getattr(torch.nn, name) for name in variant.float_types)
    for name, module in reversed(list(network.named_modules())):  # children first: a parent's path stays valid
        if name and (name in variant.float_modules or (types and isinstance(module, types))):
            parent, _, attr = name.rpartition(".")
            setattr(network.get_submodule(parent) if parent else network, attr, _float32(module))
    amp = amp_settings("cpu")
    network = amp.prepare_network(network, "cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        if amp.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with amp.autocast():
            return network(x).float()

    run.amp = amp.describe()  # type: ignore[attr-defined]
    return run


def openvino_engine(network: Any, variant: Variant, windows: list[Any]) -> Any:
    """``OpenVINONetwork`` for ``variant``; its op types are added to the ignored scope ``float_modules`` gives."""
    from common.openvino import OpenVINONetwork

    types = variant.float_types

    class Engine(OpenVINONetwork):
        def _ignored(self, model: Any) -> Any:
            import nncf

            scope = super()._ignored(model)
            if not types:
                return scope
            return nncf.IgnoredScope(names=list(scope.names) if scope else [], types=types)

    if variant.precision != "int8":
        return Engine(network, precision=variant.precision)
    return Engine(network, precision="int8", calibration=windows, float_modules=variant.float_modules)


def region_dice(reference: Any, output: Any) -> dict[str, float]:
    """Dice of each region channel's mask (sigmoid > 0.5 of the logits) against the reference's."""
    a, b = reference > 0, output > 0
    out = {}
    for c, region in enumerate(REGIONS):
        denominator = int(a[0, c].sum() + b[0, c].sum())
        out[region] = 1.0 if denominator == 0 else round(2 * int((a[0, c] & b[0, c]).sum()) / denominator, 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trained_weights", default=str(brats.DEMO_WEIGHTS), help="demo-network (init_filters 8) weights")
    p.add_argument("--work_dir", default=str(harness.ROOT / "work_dirs" / "speed_brats_precision"))
    p.add_argument("--out", default=str(harness.ROOT / "benchmarks" / "results" / "brats_precision.json"))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch
    from monai.transforms import SpatialPad

    from common.checkpoint import load_checkpoint, model_state

    torch.set_num_threads(args.threads)
    if not Path(args.trained_weights).is_file():
        raise SystemExit(f"{args.trained_weights}: no trained weights (run `make demo` first, or --trained_weights)")
    started = time.perf_counter()
    machine = harness.machine_info(args.threads)
    work = Path(args.work_dir)
    data_root = brats.make_data(work, (240, 240, 155), 5)
    brats.make_calibration_dir(data_root)  # the other 4 cases: what openvino_int8_overrides() calibrates on
    case = data_root / brats.TIMED_CASE
    overrides = {"dataset_dir": str(case), "output_dir": str(work / "out"), "init_filters": 8}
    image = harness.bundle_parser(brats.BUNDLE_DIR, "inference.json", overrides).get_parsed_content("dataset")[0]
    window = harness.bundle_parser(brats.BUNDLE_DIR, "inference.json", {}).get_parsed_content("val_roi_size")
    # zero-padded to the window, symmetric as the sliding window pads a smaller image
    x = torch.as_tensor(SpatialPad(window, method="symmetric")(image["image"])).as_subclass(torch.Tensor)[None].float()
    int8_config = harness.bundle_parser(
        brats.BUNDLE_DIR, "inference.json", {**brats.openvino_int8_overrides(), "init_filters": 8}
    )
    t = time.perf_counter()
    windows = int8_config.get_parsed_content("network#calibration")()
    calibration_s = time.perf_counter() - t
    state = model_state(load_checkpoint(args.trained_weights, map_location="cpu"))
    print(f"input {tuple(x.shape)}; {len(windows)} calibration windows of {tuple(windows[0].shape)}", flush=True)

    sides: dict[str, Any] = {"torch_fp32": harness.load_state(brats.network_def(8, 0.0), state).eval()}
    results: dict[str, Any] = {}
    for name in args.variants:
        network = harness.load_state(brats.network_def(8, 0.0), state).eval()
        variant = VARIANTS[name]
        if variant.runtime == "torch":
            sides[name] = torch_engine(network, variant)
        else:
            sides[name] = openvino_engine(network, variant, windows)
    outputs: dict[str, Any] = {}

    def call(name: str) -> Any:
        def run() -> None:
            with torch.no_grad():
                outputs[name] = sides[name](x)

        return run

    timings = harness.interleaved({n: call(n) for n in sides}, args.repeats)  # warm-up = compile (+ quantize)
    for name in args.variants:
        net = sides[name]
        results[name] = {
            "what": VARIANTS[name].what,
            "runtime": VARIANTS[name].runtime,
            "dice_vs_torch_fp32": region_dice(outputs["torch_fp32"], outputs[name]),
            "fastest_s": min(timings[name]["samples_s"]),
            "speedup_vs_torch_fp32": harness.ratio(
                min(timings["torch_fp32"]["samples_s"]), min(timings[name]["samples_s"])
            ),
            "compile_s": timings[name]["warmup_s"],
            "samples_s": timings[name]["samples_s"],
        }
        if VARIANTS[name].runtime == "torch":
            results[name]["amp"] = net.amp
            results[name]["fp32_parts"] = VARIANTS[name].float_modules + VARIANTS[name].float_types
        else:
            results[name]["int8_quantizers"] = next(iter(net.quantizers.values()), 0)
            results[name]["float_convolutions"] = [c.split("/")[0] for c in net.float_convolutions]
        print(name, json.dumps({k: results[name][k] for k in ("dice_vs_torch_fp32", "fastest_s")}))
    report = {
        "command": harness.command_line(),
        "machine": machine,
        "weights": str(Path(args.trained_weights).resolve().relative_to(harness.ROOT.resolve()))
        if Path(args.trained_weights).resolve().is_relative_to(harness.ROOT.resolve())
        else args.trained_weights,
        "input_shape": list(x.shape),
        "calibration": {"windows": len(windows), "shape": list(windows[0].shape), "seconds": round(calibration_s, 1)},
        "torch_fp32_fastest_s": min(timings["torch_fp32"]["samples_s"]),
        "variants": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    harness.write_results(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
