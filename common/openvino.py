"""A torch network run by OpenVINO's CPU runtime, as a drop-in ``torch.nn.Module`` for a bundle's inferer.

Measured on the 2-core AMD EPYC with AVX-512 BF16 (REFERENCE.md section 7, SegResNet at the model zoo's size, one
4x240x240x160 window): OpenVINO bf16 4.5x torch fp32 (torch bf16 autocast + channels-last: 2.9x) with thresholded
Dice 0.9976 against fp32, OpenVINO f32 1.9x with Dice 1.0000. OpenVINO compiles a graph per input shape; a sliding
window feeds one shape, so the network is converted once, on its first call, after the checkpoint was loaded.

``OpenVINONetwork`` keeps the torch network inside for everything that is not the forward pass: ``state_dict`` /
``load_state_dict`` (so ``common.checkpoint.load_weights`` works unchanged, and loading new weights drops the
compiled graphs), ``parameters``, ``eval``. Precision ``"auto"`` is bf16 where the CPU has native bf16
(``common.amp.cpu_supports_bf16``) and f32 elsewhere. CPU only: a CUDA user keeps the torch engine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import torch

from common.amp import cpu_supports_bf16

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "f32")


def openvino_precision(precision: str = "auto") -> str:
    """``"bf16"`` or ``"f32"``: ``"auto"`` is bf16 on CPUs with native bf16 arithmetic."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_supports_bf16() else "f32"
    return precision


class OpenVINONetwork(torch.nn.Module):
    """``network``'s forward pass compiled by OpenVINO for the CPU (one compiled graph per input shape).

    Args:
        network: the torch network (weights may be loaded later, through this module's ``load_state_dict``).
        precision: ``"auto"``, ``"bf16"`` or ``"f32"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``).
        threads: OpenVINO inference threads (``INFERENCE_NUM_THREADS``); ``None``: torch's intra-op thread count.
    """

    def __init__(self, network: torch.nn.Module, precision: str = "auto", threads: int | None = None) -> None:
        super().__init__()
        self.network = network
        self.precision = openvino_precision(precision)
        self.threads = threads
        self._compiled: dict[tuple[int, ...], Any] = {}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self._compiled.clear()  # new weights: compile again
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def describe(self) -> str:
        return f"OpenVINO CPU, {self.precision}"

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
        with outside_modes(), torch.autocast("cpu", enabled=False), torch.no_grad():
            model = ov.convert_model(network, example_input=torch.zeros(shape), input=[shape])
        config = {"INFERENCE_PRECISION_HINT": self.precision}
        config["INFERENCE_NUM_THREADS"] = str(self.threads or torch.get_num_threads())
        logger.info("OpenVINO: compiling %s for input %s (%s)", type(self.network).__name__, shape, self.precision)
        return ov.Core().compile_model(model, "CPU", config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"OpenVINONetwork runs on the CPU; got an input on {x.device} (use the torch engine)")
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor -> Tensor
        shape = tuple(int(s) for s in x.shape)
        if shape not in self._compiled:
            self._compiled[shape] = self._compile(shape)
        out = self._compiled[shape](x.detach().float().contiguous().numpy())[0]
        return torch.from_numpy(out.copy())
