"""Mean and per-label AUROC as one ignite handler, so checkpoints are chosen on the mean over labels that
can be scored (a label without positives in a small validation split is skipped, not NaN for the whole mean)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import ROCAUCMetric
from monai.metrics.rocauc import compute_roc_auc
from monai.utils import Average


class _PerLabelAUROC(ROCAUCMetric):
    """ROCAUCMetric (buffers gathered across ranks) returning per-label AUROC with NaN for unscorable labels."""

    def aggregate(self, average=None):  # noqa: ARG002 - signature of the parent
        buffer = self.get_buffer()
        if not isinstance(buffer, (tuple, list)) or not all(isinstance(b, torch.Tensor) for b in buffer):
            raise ValueError("no predictions were collected")
        y_pred, y = buffer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'y values can not be all 0/1' for labels without positives
            per_label = compute_roc_auc(y_pred, y, average=Average.NONE)
        return torch.as_tensor(np.atleast_1d(np.asarray(per_label, dtype=np.float64)))  # a float for one label


class LabelwiseAUROC(IgniteMetricHandler):
    """``engine.state.metrics[name]`` = nan-mean AUROC; ``f"{name}_{label}"`` = each label's AUROC."""

    def __init__(
        self,
        label_names: Sequence[str],
        output_transform: Callable = lambda x: x,
    ) -> None:
        super().__init__(metric_fn=_PerLabelAUROC(), output_transform=output_transform, save_details=False)
        self.label_names = list(label_names)

    def compute(self):
        per_label = self.metric_fn.aggregate().cpu().numpy()
        self._per_label = per_label
        valid = per_label[~np.isnan(per_label)]
        return float(valid.mean()) if len(valid) else float("nan")

    def completed(self, engine, name: str) -> None:
        super().completed(engine, name)
        for label, value in zip(self.label_names, self._per_label):
            engine.state.metrics[f"{name}_{label}"] = float(value)
