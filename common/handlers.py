"""Ignite handlers for per-region Dice, IoU and Hausdorff distance that plug into MONAI engines from JSON.

Each handler stores the mean over regions as ``engine.state.metrics[name]`` (usable as a key metric for
checkpointing) and every region separately as ``engine.state.metrics[f"{name}_{region}"]``, so TensorBoard,
``StatsHandler`` and ``MetricsSaver`` show e.g. ``val_dice_TC``, ``val_dice_WT``, ``val_dice_ET``. The metric
classes are MONAI's (``common.metrics`` adds the empty-mask rule and per-case spacing).

Example (evaluate.json)::

    "val_dice": {
        "_target_": "common.handlers.RegionDice",
        "region_names": "@region_names",
        "empty_rule": "brats",
        "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"
    }
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from ignite.engine import Engine
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from common.metrics import EmptyRule, RegionHausdorffMetric, region_dice, region_iou


class RegionMetricHandler(IgniteMetricHandler):
    """Any MONAI cumulative metric with ``reduction="mean_batch"``: the mean over regions as the metric value,
    plus one named entry per region (channel)."""

    def __init__(
        self,
        metric_fn: CumulativeIterationMetric,
        region_names: Sequence[str],
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
        self.region_names = list(region_names)
        self.per_region: dict[str, float] = {}

    def compute(self) -> float:
        per_region = torch.as_tensor(self.metric_fn.aggregate()).flatten()
        if per_region.numel() != len(self.region_names):
            raise ValueError(
                f"metric has {per_region.numel()} channels but region_names lists {len(self.region_names)}: "
                f"{self.region_names}"
            )
        self.per_region = {name: float(v) for name, v in zip(self.region_names, per_region)}
        self._is_reduced = True
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("attach() the handler to an engine first")
            self._engine.state.metric_details[self._name] = self.metric_fn.get_buffer()
        return float(torch.nanmean(per_region.double()))

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        for region, value in self.per_region.items():
            engine.state.metrics[f"{name}_{region}"] = value


class RegionDice(RegionMetricHandler):
    """Dice per region (binary masks, channel-first) with the ``"brats"`` or ``"nan"`` empty-mask rule."""

    def __init__(
        self,
        region_names: Sequence[str],
        empty_rule: EmptyRule = "brats",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(region_dice(empty_rule), region_names, output_transform, save_details)


class RegionIoU(RegionMetricHandler):
    """IoU (Jaccard) per region with the ``"brats"`` or ``"nan"`` empty-mask rule."""

    def __init__(
        self,
        region_names: Sequence[str],
        empty_rule: EmptyRule = "brats",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(region_iou(empty_rule), region_names, output_transform, save_details)


class RegionHausdorff(RegionMetricHandler):
    """Hausdorff distance in mm per region (spacing from each case's affine); HD95 by default."""

    def __init__(
        self,
        region_names: Sequence[str],
        percentile: float | None = 95.0,
        empty_rule: EmptyRule = "brats",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        spacing: Sequence[float] | None = None,
    ) -> None:
        metric = RegionHausdorffMetric(percentile=percentile, empty_rule=empty_rule, spacing=spacing)
        super().__init__(metric, region_names, output_transform, save_details)
