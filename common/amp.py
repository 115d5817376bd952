"""Mixed precision chosen from the device a run lands on, so one config trains on a laptop CPU and on CUDA.

MONAI's trainers and evaluators only autocast on CUDA (``torch.autocast("cuda")``), which leaves CPU runs in
fp32 although bf16 autocast makes 3D convolutions about 3x faster on CPUs with AVX-512. Here the autocast
is done by wrapping the inferer (``AutocastInferer``), which every MONAI engine calls for its forward pass,
and MONAI's own ``amp=True`` path is kept only for CUDA fp16, the one case that needs a gradient scaler.

Rules (see ``amp_settings``):
- CUDA: bf16 where the GPU supports it, else fp16 with gradient scaling; TF32 and cudnn.benchmark on.
- CPU: bf16 only where the processor has native bf16 arithmetic (AVX512-BF16 or AMX) and bf16 3D convolution
  passes a check against fp32 on the pattern of PyTorch issue #169688, else fp32. oneDNN also
  runs bf16 on plain AVX-512 by emulation, which measured 1.5-2x slower than fp32 (Intel Xeon without
  AVX512-BF16: SegResNet 64^3 train step 4.9 s bf16 vs 3.3 s fp32; DenseNet-121 1.33 s vs 0.68 s).
  Channels-last memory format on CPU (3.1 s and 0.59 s in the same run).
- ``BUNDLES_AMP=0`` in the environment, or ``enabled=False`` from a config, turns autocast off.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from common.flags import as_bool

logger = logging.getLogger(__name__)

ENV_VAR = "BUNDLES_AMP"
_OFF_VALUES = {"0", "false", "off", "no"}


@dataclass(frozen=True)
class AmpSettings:
    """What mixed precision a run uses; build it with ``amp_settings(device)``."""

    device_type: str
    dtype: torch.dtype | None
    channels_last: bool = False

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def grad_scaling(self) -> bool:
        """True only for CUDA fp16, where MONAI's trainer ``amp=True`` supplies the GradScaler."""
        return self.device_type == "cuda" and self.dtype == torch.float16

    @property
    def trainer_amp_kwargs(self) -> dict[str, Any]:
        """``amp_kwargs`` for MONAI engines when ``grad_scaling`` is on."""
        return {"dtype": self.dtype} if self.grad_scaling else {}

    @contextmanager
    def autocast(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def prepare_network(self, network: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
        """Move a network to the device, in channels-last memory format where that measured faster."""
        network = network.to(device)
        if self.channels_last:
            memory_format = _channels_last_format(network)
            if memory_format is not None:
                network = network.to(memory_format=memory_format)
        return network

    def describe(self) -> str:
        layout = ", channels-last" if self.channels_last else ""
        if not self.enabled:
            return f"amp off ({self.device_type}, fp32{layout})"
        name = str(self.dtype).replace("torch.", "")
        scaler = ", gradient scaling" if self.grad_scaling else ""
        return f"amp on ({self.device_type}, {name}{scaler}{layout})"


def _channels_last_format(network: torch.nn.Module) -> torch.memory_format | None:
    for module in network.modules():
        if isinstance(module, torch.nn.Conv3d):
            return torch.channels_last_3d
        if isinstance(module, torch.nn.Conv2d):
            return torch.channels_last
    return None


def env_allows_amp() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF_VALUES


def cpu_flags() -> set[str] | None:
    """The processor's feature flags from /proc/cpuinfo (Linux), or None where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def cpu_supports_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX-BF16) that oneDNN can use; emulated bf16 is slower than fp32."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    flags = cpu_flags()
    if flags is None:  # not Linux: trust oneDNN's own check
        return onednn
    return onednn and bool({"avx512_bf16", "amx_bf16"} & flags)


@functools.lru_cache(maxsize=1)
def cpu_bf16_conv3d_correct() -> bool:
    """Whether bf16 3D convolution gives fp32's answer on this CPU, checked once per process on the pattern of
    PyTorch issue #169688 (AVX512-BF16/AMX CPUs: wrong output when a strided conv3d's innermost output size is 1),
    in both memory formats. It takes milliseconds; where it fails, runs stay in fp32 instead of returning wrong
    segmentations and boxes fast."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(16, 16, 3, stride=2, padding=1)
    with torch.no_grad():
        for param in conv.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        x = torch.randn(1, 16, 8, 8, 2, generator=generator)  # output 4x4x1
        reference = conv(x)
        for memory_format in (torch.contiguous_format, torch.channels_last_3d):
            conv = conv.to(memory_format=memory_format)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = conv(x.to(memory_format=memory_format)).float()
            error = (out - reference).abs().max() / reference.abs().max()
            if not bool(torch.isfinite(error)) or error > 0.05:  # bf16 rounding alone: about 0.003
                return False
    return True


def amp_settings(device: torch.device | str, enabled: bool = True, channels_last: bool | None = None) -> AmpSettings:
    """Pick autocast dtype and memory format for ``device``; also sets the CUDA backend flags.

    Args:
        device: the device the network runs on.
        enabled: ``False`` forces fp32 (the ``BUNDLES_AMP=0`` environment variable does the same).
        channels_last: memory format override; by default on for CPU and wherever autocast is on.
    """
    device = torch.device(device)
    enabled = as_bool(enabled)  # `--use_amp false` arrives as the string "false"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dtype: torch.dtype | None = None
    if enabled and env_allows_amp():
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif device.type == "cpu" and cpu_supports_bf16():
            if cpu_bf16_conv3d_correct():
                dtype = torch.bfloat16
            else:
                logger.warning(
                    "bf16 3D convolution gives wrong results on this CPU (PyTorch issue #169688): mixed precision "
                    "off, running in fp32; a PyTorch release with the fix turns it back on"
                )
    if channels_last is None:
        channels_last = dtype is not None or device.type == "cpu"
    else:
        channels_last = as_bool(channels_last)
    return AmpSettings(device_type=device.type, dtype=dtype, channels_last=channels_last)


class AutocastInferer:
    """Run any MONAI inferer (or callable ``inferer(inputs, network, ...)``) under the run's autocast.

    Outputs come back as float32 so that losses, metrics and post-transforms see full precision.
    """

    def __init__(self, inferer: Callable[..., Any], amp: AmpSettings) -> None:
        self.inferer = inferer
        self.amp = amp

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.amp.autocast():
            outputs = self.inferer(inputs, network, *args, **kwargs)
        return _to_float32(outputs)

    def __getattr__(self, name: str) -> Any:
        # expose the wrapped inferer's settings (roi_size, overlap, ...) to code that reads them
        if name in ("inferer", "amp"):
            raise AttributeError(name)
        return getattr(self.inferer, name)


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value
