"""Ignite pieces for the evaluator's per-scan outputs: the LUNA16 FROC/CPM as a key metric (with its report), and
the inference writer (JSON per scan, LUNA16 submission CSV, optional PNGs) - all in world mm (ITK/LPS)."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.utils import convert_to_numpy

from common.files import atomic_open
from scripts.froc import FP_RATES, evaluate_froc, plot_froc, write_json
from scripts.prepare import COORDINATES

logger = logging.getLogger(__name__)


def detections_of(output: dict[str, Any]) -> list[list[float]]:
    """``[[x, y, z, score], ...]`` world mm (LPS) from one evaluator output."""
    boxes = convert_to_numpy(output["pred_box"], dtype=np.float64).reshape(-1, 6)
    scores = convert_to_numpy(output["pred_score"], dtype=np.float64).reshape(-1)
    return [[*map(float, b[:3]), float(s)] for b, s in zip(boxes, scores)]


class LunaFROCMetric(Metric):
    """CPM over the scans of one evaluator run (the key metric); the full FROC result is kept in ``result`` and,
    with ``output_dir``, written as ``froc.json``, ``froc.png`` and ``predictions.csv``. Sensitivities at the 7
    FP rates also go to ``engine.state.metrics`` as ``sens_at_<rate>fp`` (characters MLflow accepts in a name)."""

    def __init__(
        self,
        output_dir: str | None = None,
        n_bootstrap: int = 0,
        name: str = "cpm",
        output_transform: Any = lambda x: x,
    ) -> None:
        self.output_dir = output_dir
        self.n_bootstrap = n_bootstrap
        self.metric_name = name
        self.result: dict[str, Any] = {}
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._boxes: dict[str, np.ndarray] = {}
        self._detections: dict[str, list[list[float]]] = {}
        self._nodules: dict[str, list[list[float]]] = {}
        self._excluded: dict[str, list[list[float]]] = {}

    def update(self, output: list[dict[str, Any]]) -> None:
        for o in output:
            uid = o["seriesuid"]
            self._detections[uid] = detections_of(o)
            self._boxes[uid] = convert_to_numpy(o["pred_box"], dtype=np.float64).reshape(-1, 6)
            self._nodules[uid] = [list(map(float, n)) for n in o["nodules"]]
            self._excluded[uid] = [list(map(float, n)) for n in o["excluded"]]

    def _gather(self) -> None:
        """Merge the scans of every rank: under torchrun the validation sampler gives each rank its own scans."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self._detections, self._boxes, self._nodules, self._excluded))
        for detections, boxes, nodules, excluded in parts:
            self._detections.update(detections)
            self._boxes.update(boxes)
            self._nodules.update(nodules)
            self._excluded.update(excluded)

    def compute(self) -> float:
        self._gather()
        uids = sorted(self._detections)
        self.result = evaluate_froc(self._detections, self._nodules, self._excluded, uids, self.n_bootstrap)
        self.result["coco"] = coco_metrics(
            [self._boxes[u] for u in uids],
            [np.array([d[3] for d in self._detections[u]]) for u in uids],
            [self._nodules[u] for u in uids],
        )
        if self.output_dir and not (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0):
            out = Path(self.output_dir)
            write_json(self.result, out / "froc.json")
            plot_froc(self.result, out / "froc.png")
            write_submission(self._detections, out / "predictions.csv")
        r = self.result
        logger.info("FROC over %d scans, %d nodules: CPM %.4f", r["n_scans"], r["n_nodules"], r["cpm"])
        return float(r["cpm"])

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        for rate in FP_RATES:
            engine.state.metrics[f"sens_at_{rate}fp"] = self.result["sensitivity_at_fp_rates"][str(rate)]


def coco_metrics(
    pred_boxes: list[np.ndarray], pred_scores: list[np.ndarray], nodules: list[list[list[float]]]
) -> dict[str, float]:
    """COCO mAP/mAR (IoU 0.1-0.5, MONAI's COCOMetric) on world-mm boxes, reported beside the CPM for comparison
    with the model-zoo bundle; nodules are cubes of their diameter. Not a LUNA16 score."""
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    def xyzxyz(cccwhd: np.ndarray) -> np.ndarray:
        return np.c_[cccwhd[:, :3] - cccwhd[:, 3:] / 2, cccwhd[:, :3] + cccwhd[:, 3:] / 2]

    gt = [xyzxyz(np.array([[x, y, z, d, d, d] for x, y, z, d in n], float).reshape(-1, 6)) for n in nodules]
    if not any(len(g) for g in gt):
        return {}
    metric = COCOMetric(classes=["nodule"], iou_list=[0.1], max_detection=[100], verbose=False)
    results = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=[xyzxyz(b) for b in pred_boxes],
        pred_classes=[np.zeros(len(b), int) for b in pred_boxes],
        pred_scores=list(pred_scores),
        gt_boxes=gt,
        gt_classes=[np.zeros(len(g), int) for g in gt],
    )
    return {k: float(v) for k, v in metric(results)[0].items()}


def write_submission(detections: dict[str, list[list[float]]], path: str | os.PathLike) -> Path:
    """LUNA16 submission CSV ``seriesuid,coordX,coordY,coordZ,probability`` (world mm, LPS), written atomically."""
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seriesuid", "coordX", "coordY", "coordZ", "probability"])
        for uid in sorted(detections):
            for x, y, z, s in detections[uid]:
                w.writerow([uid, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{s:.6f}"])
    return Path(path)


def save_detection_png(output: dict[str, Any], path: Path, max_detections: int = 3, min_score: float = 0.5) -> bool:
    """Axial slices through the top detections with their boxes drawn (voxel grid of the network input)."""
    boxes = output.get("pred_box_voxel")
    if boxes is None:
        return False
    boxes, scores = (
        convert_to_numpy(boxes, dtype=np.float64).reshape(-1, 6),
        convert_to_numpy(output["pred_score"], dtype=np.float64).reshape(-1),
    )
    keep = np.argsort(-scores)[:max_detections]
    keep = [k for k in keep if scores[k] >= min_score]
    if not keep:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = convert_to_numpy(output["image"], dtype=np.float64)[0]  # x, y, z in RAS orientation
    fig, axes = plt.subplots(1, len(keep), figsize=(4 * len(keep), 4), squeeze=False)
    for ax, k in zip(axes[0], keep):
        x0, y0, z0, x1, y1, z1 = boxes[k]
        z = int(np.clip(round((z0 + z1) / 2), 0, image.shape[2] - 1))
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")  # RAS: x to the right, y up
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="r", linewidth=1.5))
        ax.set_title(f"slice {z}, score {scores[k]:.2f}")
        ax.axis("off")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True


class DetectionWriter:
    """Writes ``<output_dir>/<seriesuid>.json`` per scan and ``<output_dir>/<csv_name>`` (submission format) once
    the run completes; with ``save_png`` also ``<seriesuid>.png`` with boxes on slices through detections."""

    def __init__(
        self,
        output_dir: str,
        csv_name: str = "predictions.csv",
        save_png: bool = False,
        png_min_score: float = 0.5,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.csv_name = csv_name
        self.save_png = save_png
        self.png_min_score = png_min_score
        self.detections: dict[str, list[list[float]]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.detections.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        for o in engine.state.output:
            uid = o["seriesuid"]
            dets = detections_of(o)
            self.detections[uid] = dets
            record = {
                "seriesuid": uid,
                "image": str(o["image"].meta.get("filename_or_obj", "")) if hasattr(o["image"], "meta") else "",
                "coordinates": COORDINATES,
                "box_mode": "cccwhd",
                "boxes": convert_to_numpy(o["pred_box"], dtype=np.float64).reshape(-1, 6).round(3).tolist(),
                "scores": [round(d[3], 6) for d in dets],
            }
            write_json(record, self.output_dir / f"{uid}.json")
            if self.save_png:
                save_detection_png(o, self.output_dir / f"{uid}.png", min_score=self.png_min_score)

    def completed(self, engine: Engine) -> None:
        path = write_submission(self.detections, self.output_dir / self.csv_name)
        logger.info("wrote %d detections of %d scans to %s", sum(map(len, self.detections.values())),
                    len(self.detections), path)  # fmt: skip
