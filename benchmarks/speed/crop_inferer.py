"""A lever the BraTS speed benchmark measures (not shipped in the bundle): sliding-window inference restricted
to the brain: BraTS volumes are skull-stripped, so every voxel outside the
bounding box of the non-zero input is background and need not go through the network.

A real BraTS brain fills about a third of the 240x240x155 grid (its box is ~140x170x140 voxels), so the model-zoo
window of 240x240x160 spends most of its compute on zeros. ``ForegroundCropInferer`` crops the batch to the box
of voxels that are non-zero in any channel (plus ``margin``), runs a ``SlidingWindowInferer`` whose window is the
configured ``roi_size`` shrunk to the crop (rounded up to ``k_divisible``, so no zeros are padded back), and
pastes the logits into a full-size output filled with ``fill_value`` (sigmoid(-30) ~ 1e-13: no tumour outside
the brain). Outputs keep the input's shape and metadata. Measured speed and agreement with the uncropped
reference: benchmarks/speed/brats.py and docs/README.md ("Speed").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type


def foreground_box(image: torch.Tensor, margin: int = 0) -> list[slice] | None:
    """Slices of the spatial box holding every voxel that is non-zero in any batch item or channel (+ margin);
    None when the whole input is zero."""
    nonzero = (image != 0).flatten(0, 1).any(0)  # spatial mask
    if not bool(nonzero.any()):
        return None
    box = []
    for axis in range(nonzero.ndim):
        others = tuple(a for a in range(nonzero.ndim) if a != axis)
        hit = torch.nonzero(nonzero.any(dim=others) if others else nonzero).flatten()
        lo = max(int(hit[0]) - margin, 0)
        hi = min(int(hit[-1]) + 1 + margin, nonzero.shape[axis])
        box.append(slice(lo, hi))
    return box


class ForegroundCropInferer(Inferer):
    """``SlidingWindowInferer`` over the non-zero bounding box only; see the module docstring."""

    def __init__(
        self,
        roi_size: Sequence[int],
        sw_batch_size: int = 1,
        overlap: float = 0.5,
        margin: int = 8,
        k_divisible: int = 8,
        fill_value: float = -30.0,
        mode: str = "constant",
    ) -> None:
        super().__init__()
        self.roi_size = [int(r) for r in roi_size]
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.margin = margin
        self.k_divisible = k_divisible
        self.fill_value = fill_value
        self.mode = mode

    def window(self, crop_shape: Sequence[int]) -> list[int]:
        k = self.k_divisible
        return [min(r, -(-int(c) // k) * k) for r, c in zip(self.roi_size, crop_shape)]

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        box = foreground_box(inputs, self.margin)
        if box is None:
            box = [slice(0, s) for s in inputs.shape[2:]]
        crop = inputs[(slice(None), slice(None), *box)]
        inferer = SlidingWindowInferer(
            roi_size=self.window(crop.shape[2:]),
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode=self.mode,
        )
        logits = inferer(crop, network, *args, **kwargs)
        logits = logits.as_tensor() if hasattr(logits, "as_tensor") else logits
        out = torch.full(
            (inputs.shape[0], logits.shape[1], *inputs.shape[2:]),
            self.fill_value,
            dtype=logits.dtype,
            device=logits.device,
        )
        out[(slice(None), slice(None), *box)] = logits
        return convert_to_dst_type(out, inputs, dtype=out.dtype)[0]
