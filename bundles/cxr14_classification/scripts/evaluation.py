"""Evaluation report: per-label AUROC and mean, sensitivity/specificity at a threshold chosen on VALIDATION
(Youden's J, never on test), ROC curves as PNG, metrics as CSV and JSON (all written atomically)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_roc_auc
from monai.utils import convert_to_numpy

from common.files import atomic_write_bytes, write_json_atomic


class PredictionCollector:
    """Ignite handler keeping every (probabilities, labels, image path) of one engine run in memory."""

    def __init__(self, pred_key: str = "pred", label_key: str = "label", path_key: str = "image_path") -> None:
        self.pred_key, self.label_key, self.path_key = pred_key, label_key, path_key
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:  # noqa: ARG002 - ignite passes the engine
        self.preds: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.paths: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def collect(self, engine: Engine) -> None:
        for item, path in zip(engine.state.output, batch_paths(engine, self.path_key)):
            self.preds.append(convert_to_numpy(item[self.pred_key], dtype=np.float32))
            if self.label_key in item:
                self.labels.append(convert_to_numpy(item[self.label_key], dtype=np.float32))
            self.paths.append(path)

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.preds or len(self.labels) != len(self.preds):
            raise ValueError("no labelled predictions collected (did the evaluator run on a labelled datalist?)")
        return np.stack(self.preds), np.stack(self.labels)


def batch_paths(engine: Engine, path_key: str = "image_path") -> list[str]:
    """Source file of each image of the current (decollated) batch; engine outputs only keep image/label/pred."""
    batch = engine.state.batch
    if isinstance(batch, dict):
        return [str(p) for p in batch.get(path_key, [""] * len(engine.state.output))]
    return [str(item.get(path_key, "")) if isinstance(item, dict) else "" for item in batch]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with one point per distinct score, thresholds descending (predict >= t)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order].astype(bool)
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, s[last_of_tie]]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (MONAI's ``compute_roc_auc``: ties count one half); NaN with one class only."""
    if labels.min() == labels.max():
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels)))


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (the highest one when several tie, compared to 1e-9 so
    that rounding does not choose); 0.5 when a label has one class only."""
    if labels.min() == labels.max():
        return 0.5
    fpr, tpr, thresholds = roc_curve(scores, labels)
    j = tpr[1:] - fpr[1:]
    best = int(np.flatnonzero(j >= j.max() - 1e-9)[0]) + 1
    return float(thresholds[best])


def sens_spec(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    pred, y = scores >= threshold, labels.astype(bool)
    sens = float((pred & y).sum() / y.sum()) if y.any() else float("nan")
    spec = float((~pred & ~y).sum() / (~y).sum()) if (~y).any() else float("nan")
    return sens, spec


def compute_report(
    val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], label_names: Sequence[str]
) -> dict[str, Any]:
    """Per-label rows and means (NaN-aware: a label without positives in the test set is reported, not averaged)."""
    (vp, vy), (tp, ty) = val, test
    rows = []
    for i, name in enumerate(label_names):
        threshold = youden_threshold(vp[:, i], vy[:, i])
        sens, spec = sens_spec(tp[:, i], ty[:, i], threshold)
        rows.append(
            {
                "label": name,
                "auroc": auroc(tp[:, i], ty[:, i]),
                "val_auroc": auroc(vp[:, i], vy[:, i]),
                "threshold": threshold,
                "sensitivity": sens,
                "specificity": spec,
                "n_positive": int(ty[:, i].sum()),
                "n_negative": int(len(ty) - ty[:, i].sum()),
            }
        )

    def mean(key: str) -> float:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        return float(np.mean(values)) if values else float("nan")

    summary = {k: mean(k) for k in ("auroc", "val_auroc", "sensitivity", "specificity")}
    summary.update({"n_test_images": int(len(ty)), "n_val_images": int(len(vy)), "threshold_rule": "youden_on_val"})
    return {"summary": summary, "labels": rows}


def plot_roc(test: tuple[np.ndarray, np.ndarray], label_names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preds, labels = test
    fig, axes = plt.subplots(4, 4, figsize=(13, 13))
    for i, ax in enumerate(axes.flat):
        if i >= len(label_names):
            ax.axis("off")
            continue
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        if labels[:, i].min() != labels[:, i].max():
            fpr, tpr, _ = roc_curve(preds[:, i], labels[:, i])
            ax.plot(fpr, tpr, lw=1.5)
            ax.set_title(f"{label_names[i]} AUROC {auroc(preds[:, i], labels[:, i]):.3f}", fontsize=9)
        else:
            ax.set_title(f"{label_names[i]}: one class only", fontsize=9)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(buffer.getvalue(), path)


def write_report(
    val: PredictionCollector, test: PredictionCollector, label_names: Sequence[str], output_dir: str | os.PathLike
) -> dict[str, Any]:
    """Write metrics.json, metrics.csv, roc_curves.png and test_predictions.csv to ``output_dir``."""
    out = Path(output_dir)
    report = compute_report(val.arrays, test.arrays, label_names)
    write_json_atomic(report, out / "metrics.json")
    atomic_write_bytes(
        _csv_bytes(list(report["labels"][0]), [list(r.values()) for r in report["labels"]]), out / "metrics.csv"
    )
    preds, labels = test.arrays
    header = ["image", *[f"p_{n}" for n in label_names], *[f"y_{n}" for n in label_names]]
    rows = [[p, *map(float, pr), *map(int, y)] for p, pr, y in zip(test.paths, preds, labels)]
    atomic_write_bytes(_csv_bytes(header, rows), out / "test_predictions.csv")
    plot_roc((preds, labels), label_names, out / "roc_curves.png")
    summary = report["summary"]
    lines = [
        f"{r['label']:<20} AUROC {r['auroc']:.3f}  sens {r['sensitivity']:.3f}  spec {r['specificity']:.3f}"
        for r in report["labels"]
    ]
    print("\n".join(lines) + f"\n{'mean':<20} AUROC {summary['auroc']:.3f}  (test images: {summary['n_test_images']})")
    return report


def _csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()
