"""A torch network run by OpenVINO's CPU runtime, as a drop-in ``torch.nn.Module`` for a bundle's inferer.

Measured on the 2-core AMD EPYC with AVX-512 BF16 (REFERENCE.md section 7, SegResNet at the model zoo's size, one
4x240x240x160 window): OpenVINO bf16 4.5x torch fp32 (torch bf16 autocast + channels-last: 2.9x) with thresholded
Dice 0.9976 against fp32, OpenVINO f32 1.9x with Dice 1.0000. OpenVINO compiles a graph per input shape; a sliding
window feeds one shape, so the network is converted once, on its first call, after the checkpoint was loaded.
It is traced at a small spatial size (``TRACE_SIZE`` per axis) and the graph reshaped to the input's: tracing
SegResNet at a 240x240x160 window took 158 s on 2 busy cores, at 32^3 5.5 s, with the same f32 output.

``OpenVINONetwork`` keeps the torch network inside for everything that is not the forward pass: ``state_dict`` /
``load_state_dict`` (so ``common.checkpoint.load_weights`` works unchanged, and loading new weights drops the
compiled graphs), ``parameters``, ``eval``. Precision ``"auto"`` is bf16 where the CPU has native bf16
(``common.amp.cpu_supports_bf16``) and f32 elsewhere. CPU only: a CUDA user keeps the torch engine.

``"int8"``: NNCF's post-training quantization of the converted graph (convolution weights and their inputs in int8,
everything else in the ``"auto"`` precision), calibrated on ``calibration`` windows (same batch and channels as the
input; a smaller spatial size keeps NNCF's memory down, the quantized graph is then reshaped to the input's). It
changes the output more than bf16 does; the bundles ship it as a measured, opt-in lever only. ``float_modules``
keeps chosen modules' convolutions out of int8 (measured on BraTS, demo-trained SegResNet, one 240x240x160 window:
all convolutions in int8 give Dice against torch fp32 0.982/0.981/0.922 TC/WT/ET; the first and last in bf16
0.981/0.981/0.981; the whole decoder in bf16 no better: ``python -m benchmarks.speed.brats_precision``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from common.amp import AmpSettings, cpu_supports_bf16, env_allows_amp
from common.flags import as_bool

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "f32", "int8")
ENGINES = ("auto", "openvino", "torch")
TRACE_SIZE = 32  # spatial size per axis the network is traced at (a multiple of a 3D U-Net's usual 8-32 stride)


def trace_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The shape ``shape``'s network is converted at: batch and channels kept, each spatial axis at most
    ``TRACE_SIZE``. The conversion runs a forward pass and folds shape computations at that size, so its time
    grows with the size; the converted graph is then reshaped to ``shape``."""
    return tuple(shape[:2]) + tuple(min(int(s), TRACE_SIZE) for s in shape[2:])


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, shared by every engine and never dropped.

    Why one: OpenVINO's CPU plugin (2026.4) points the calling thread's alternate signal stack at a buffer of its
    own while a plugin instance lives and restores the previous stack when that instance is destroyed. With a Core
    per engine, engines dropped in another order than they were made (garbage collection decides) leave the main
    thread's alternate stack pointing at freed memory, and the next signal with a Python handler (Python installs
    them with ``SA_ONSTACK``) kills the process with a kernel-raised SIGSEGV. One Core, kept for the process's life,
    sets it once and never restores it.
    """
    import openvino as ov

    return ov.Core()


def openvino_precision(precision: str = "auto") -> str:
    """``"bf16"``, ``"f32"`` or ``"int8"``: ``"auto"`` is bf16 on CPUs with native bf16 arithmetic."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_supports_bf16() else "f32"
    return precision


def inference_engine(engine: str = "auto", device: torch.device | str = "cpu") -> str:
    """``"openvino"`` or ``"torch"``, the engine a bundle's inference and evaluation run the network in.

    ``"auto"``: OpenVINO on the CPU when the ``openvino`` package is installed, torch on CUDA or without it. Measured
    on BraTS (``python -m benchmarks.speed.brats``, bundle README): on a CPU with native bf16, OpenVINO's bf16 gives
    fp32's thresholded output (Dice 0.999 per region) where torch's bf16 autocast does not (ET 0.981), and is faster.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    device = torch.device(device)
    installed = importlib.util.find_spec("openvino") is not None
    if engine == "auto":
        return "openvino" if device.type == "cpu" and installed else "torch"
    if engine == "openvino" and device.type != "cpu":
        raise ValueError(f"engine 'openvino' runs on the CPU, the device is {device}: use engine 'torch'")
    if engine == "openvino" and not installed:
        raise ImportError("engine 'openvino' needs the openvino package (requirements.txt), or use engine 'torch'")
    return engine


def inference_network(
    network: torch.nn.Module,
    device: torch.device | str,
    amp: AmpSettings,
    engine: str = "auto",
    use_amp: bool | str = True,
) -> torch.nn.Module:
    """``network`` as inference runs it: in OpenVINO (``inference_engine``) in bf16 where the CPU has native bf16
    arithmetic, f32 elsewhere or with ``use_amp`` off (``--use_amp false``, ``BUNDLES_AMP=0``); in torch prepared by
    ``amp`` (device, memory format; the inferer applies its autocast). Weights are loaded later, into either."""
    if inference_engine(engine, device) == "torch":
        return amp.prepare_network(network, device)
    precision = "auto" if as_bool(use_amp) and env_allows_amp() else "f32"
    return OpenVINONetwork(network, precision=precision)


def describe_engine(network: torch.nn.Module, amp: AmpSettings) -> str:
    """What ``network`` (of ``inference_network``) computes in, for the run's first line of output."""
    return network.describe() if isinstance(network, OpenVINONetwork) else f"torch, {amp.describe()}"


class OpenVINONetwork(torch.nn.Module):
    """``network``'s forward pass compiled by OpenVINO for the CPU (one compiled graph per input shape).

    Args:
        network: the torch network (weights may be loaded later, through this module's ``load_state_dict``).
        precision: ``"auto"``, ``"bf16"`` or ``"f32"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``), or ``"int8"``.
        threads: OpenVINO inference threads (``INFERENCE_NUM_THREADS``); ``None``: torch's intra-op thread count.
        calibration: for ``"int8"``, the calibration windows (tensors of shape ``(1, C, *roi)``), or a callable
            returning them on first use (so that reading and preprocessing them waits until a graph is compiled).
        float_modules: for ``"int8"``, modules of ``network`` (names as in ``named_modules()``, e.g. SegResNet's
            ``"convInit"`` and ``"conv_final"``) whose convolutions stay in the ``"auto"`` precision: the first
            convolution sees raw intensities and the last one makes the logits that are thresholded, where int8's
            rounding costs the most agreement.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        precision: str = "auto",
        threads: int | None = None,
        calibration: Sequence[torch.Tensor] | Callable[[], Sequence[torch.Tensor]] | None = None,
        float_modules: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.network = network
        self.precision = openvino_precision(precision)
        if self.precision == "int8" and calibration is None:
            raise ValueError("OpenVINONetwork(precision='int8') needs calibration windows (calibration=...)")
        modules = dict(network.named_modules())
        unknown = [name for name in float_modules if not name or name not in modules]
        if unknown:
            raise ValueError(f"float_modules {unknown}: no such module in {type(network).__name__}")
        self.float_modules = tuple(float_modules)
        self.threads = threads
        self._calibration = calibration
        self._compiled: dict[tuple[int, ...], Any] = {}
        self.quantizers: dict[tuple[int, ...], int] = {}  # int8: quantizers NNCF inserted, per compiled shape
        self.float_convolutions: list[str] = []  # int8: the graph's convolutions of ``float_modules``

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self._compiled.clear()  # new weights: compile again
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def describe(self) -> str:
        if self.precision == "int8":
            kept = f" but those of {', '.join(self.float_modules)}" if self.float_modules else ""
            return f"OpenVINO CPU, int8 convolutions (NNCF){kept}, {openvino_precision('auto')} elsewhere"
        return f"OpenVINO CPU, {self.precision}"

    def _calibration_windows(self, shape: tuple[int, ...]) -> list[Any]:
        """The calibration windows as arrays: one shape for all, the batch and channels of ``shape`` (the spatial
        size may differ: the quantized graph is reshaped to ``shape``)."""
        windows = self._calibration() if callable(self._calibration) else self._calibration
        arrays = [w.detach().float().contiguous().cpu().numpy() for w in windows or []]
        if not arrays:
            raise ValueError("OpenVINONetwork(precision='int8'): no calibration windows")
        shapes = sorted({tuple(a.shape) for a in arrays})
        if len(shapes) > 1 or shapes[0][:2] != shape[:2]:
            raise ValueError(
                f"int8 calibration windows of shape {shapes}: expected one shape, with batch and channels "
                f"{shape[:2]} of the input {shape}"
            )
        return arrays

    def _compile(self, shape: tuple[int, ...]) -> Any:
        import openvino as ov

        network = self.network.float().eval()
        # conversion traces the network in fp32: outside the inferer's autocast (whose bf16 weight copies would be
        # traced as constants) and outside any dispatch mode (torch refuses to trace inside one, e.g. the FLOP
        # counter of benchmarks/speed)
        try:
            from torch.utils._python_dispatch import _disable_current_modes as outside_modes
        except ImportError:  # a torch without it: convert in place
            outside_modes = contextlib.nullcontext
        windows = self._calibration_windows(shape) if self.precision == "int8" else []
        # converted at a small shape, then reshaped to ``shape`` (see ``trace_shape``); int8: at the calibration
        # windows' shape, which NNCF needs: it keeps every activation of a calibration window in memory at once
        # (over 20 GB for one 240x240x160 BraTS window)
        convert_shape = tuple(windows[0].shape) if windows else trace_shape(shape)
        with outside_modes(), torch.autocast("cpu", enabled=False), torch.no_grad():
            model = ov.convert_model(network, example_input=torch.zeros(convert_shape), input=[convert_shape])
        precision = self.precision
        if precision == "int8":
            logger.info("NNCF: int8 quantization from %d calibration windows of %s", len(windows), convert_shape)
            model = self._quantize(model, windows)
            self.quantizers[shape] = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
            logger.info("NNCF: %d int8 quantizers inserted", self.quantizers[shape])
            precision = openvino_precision("auto")  # for what stays outside the int8 convolutions
        if convert_shape != shape:
            model.reshape(list(shape))
        config = {"INFERENCE_PRECISION_HINT": precision}
        config["INFERENCE_NUM_THREADS"] = str(self.threads or torch.get_num_threads())
        logger.info("OpenVINO: compiling %s for input %s (%s)", type(self.network).__name__, shape, self.describe())
        return openvino_core().compile_model(model, "CPU", config)

    def _quantize(self, model: Any, windows: list[Any]) -> Any:
        """NNCF post-training quantization of the converted ``model`` on the calibration ``windows``, the
        convolutions of ``float_modules`` left out."""
        import nncf

        return nncf.quantize(model, nncf.Dataset(windows), subset_size=len(windows), ignored_scope=self._ignored(model))

    def _ignored(self, model: Any) -> Any:
        """NNCF's ignored scope: the convolutions of ``float_modules`` (``None`` when there are none)."""
        import nncf

        self.float_convolutions = convolutions_of(model, self.float_modules)
        return nncf.IgnoredScope(names=self.float_convolutions) if self.float_convolutions else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"OpenVINONetwork runs on the CPU; got an input on {x.device} (use the torch engine)")
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor -> Tensor
        shape = tuple(int(s) for s in x.shape)
        if shape not in self._compiled:
            self._compiled[shape] = self._compile(shape)
        out = self._compiled[shape](x.detach().float().contiguous().numpy())[0]
        return torch.from_numpy(out.copy())


def convolutions_of(model: Any, modules: Sequence[str]) -> list[str]:
    """The names of the convolutions of converted OpenVINO ``model`` that come from the torch ``modules`` (the
    converter names each op ``__module.<module path>/...``); a module without one is an error, not a silent no-op."""
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    found = []
    for module in modules:
        mine = [c for c in convolutions if c.startswith((f"__module.{module}.", f"__module.{module}/"))]
        if not mine:
            raise ValueError(f"float_modules: {module!r} has no convolution in the converted graph")
        found += mine
    return found


def calibration_windows(dataset: Any, roi_size: Sequence[int], n: int, key: str = "image") -> list[torch.Tensor]:
    """The first ``n`` preprocessed images of ``dataset`` (an inference config's ``dataset``), each centre-cropped
    or zero-padded to ``roi_size`` (symmetric, as the sliding window pads a smaller image): int8 calibration on the
    intensities the network then sees. The crop may be smaller than the inference window (memory, above)."""
    from monai.transforms import ResizeWithPadOrCrop

    fit = ResizeWithPadOrCrop(spatial_size=list(roi_size))
    windows = []
    for i in range(min(n, len(dataset))):
        window = torch.as_tensor(fit(dataset[i][key]))  # MetaTensor -> Tensor
        windows.append(window.as_subclass(torch.Tensor)[None].float())
    return windows
