"""Ignite pieces for the evaluator's per-scan outputs: the LUNA16 FROC/CPM as a key metric (with its report), and
the inference writer (JSON per scan, LUNA16 submission CSV, optional PNGs) - all in world mm (ITK/LPS)."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.utils import convert_to_numpy

from common.files import atomic_open
from scripts.boxes import world_to_voxel_boxes
from scripts.froc import FP_RATES, evaluate_froc, plot_froc, write_json
from scripts.prepare import COORDINATES, read_annotations

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


PREDICTION_COLOUR = (1.0, 0.2, 0.2)  # red
GROUND_TRUTH_COLOUR = (0.0, 1.0, 1.0)  # cyan, dashed


def box_label(tag: str, box_world: Any, score: float | None = None) -> str:
    """One line for a box: tag, score (predictions), centre in world mm (LPS, as annotations.csv), diameter in mm
    (the mean of the box's three sides: a sphere's box is a cube of its diameter)."""
    x, y, z, *sides = (float(v) for v in np.asarray(box_world, dtype=np.float64).reshape(6))
    score_text = f" score {score:.2f}," if score is not None else ""
    return f"{tag}{score_text} centre ({x:.1f}, {y:.1f}, {z:.1f}) mm, diam. {np.mean(sides):.1f} mm"


@dataclass
class Mark:
    """A box drawn on a slice: ``rect`` = (col0, row0, col1, row1) in the displayed slice's pixel coordinates."""

    kind: str  # "prediction" or "ground truth"
    tag: str  # P1, P2, ... by score; G1, G2, ... in annotation order
    rect: tuple[float, float, float, float]
    label: str


@dataclass
class SlicePanel:
    """One axial slice as shown: ``image`` (rows, cols) in the radiological convention (the patient's right on the
    image's left, anterior up), slice ``z`` of ``n_slices`` of the RAS-reoriented image, world z in mm."""

    z: int
    n_slices: int
    z_mm: float
    image: np.ndarray
    pixel_aspect: float  # row spacing / column spacing
    marks: list[Mark]


def detection_panels(
    image: np.ndarray,
    affine: np.ndarray,
    pred_boxes: Any,
    pred_scores: Any,
    nodules: list[list[float]] | None = None,
    max_detections: int = 3,
    min_score: float = 0.5,
    max_panels: int = 6,
) -> list[SlicePanel]:
    """The slices a detection PNG shows, before any plotting: the centre slice of each of the ``max_detections``
    best predictions scoring >= ``min_score``, then of each ground-truth nodule not drawn on those slices (a
    missed nodule gets its own panel, a hit is seen on its prediction's slice), at most ``max_panels``. Every
    slice shows all those boxes that cross it.

    ``image`` (x, y, z) with its ``affine`` (RAS, as MONAI's ITK reader gives); ``pred_boxes`` world LPS
    ``cccwhd`` mm (the writer's ``pred_box``); ``nodules`` ``[[x, y, z, diameter], ...]`` world LPS mm (as
    annotations.csv). Predictions and ground truth take the same path world mm -> voxel, so their overlap on
    the picture is their overlap in the scan."""
    from nibabel import orientations

    volume, affine = np.asarray(image, dtype=np.float64), np.asarray(affine, dtype=np.float64)
    start = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(start, orientations.axcodes2ornt(("R", "A", "S")))
    volume = orientations.apply_orientation(volume, transform)
    affine = affine @ orientations.inv_ornt_aff(transform, image.shape)
    nx, ny, nz = volume.shape
    sx, sy, _ = np.linalg.norm(affine[:3, :3], axis=0)

    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 6)
    pred_scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    order = [int(k) for k in np.argsort(-pred_scores, kind="stable")[:max_detections] if pred_scores[k] >= min_score]
    gt = np.asarray([[x, y, z, d, d, d] for x, y, z, d in (nodules or [])], dtype=np.float64).reshape(-1, 6)
    boxes = [("prediction", f"P{n + 1}", pred_boxes[k], float(pred_scores[k])) for n, k in enumerate(order)]
    boxes += [("ground truth", f"G{n + 1}", b, None) for n, b in enumerate(gt)]
    if not boxes:
        return []
    voxel = np.asarray(world_to_voxel_boxes(np.array([b[2] for b in boxes]), affine), dtype=np.float64)

    def crosses(box: np.ndarray, z: int) -> bool:
        return bool(box[2] <= z + 0.5 and box[5] >= z - 0.5)

    slices: list[int] = []
    for (kind, *_), box in zip(boxes, voxel):
        z = int(np.clip(np.floor((box[2] + box[5]) / 2 + 0.5), 0, nz - 1))
        if z in slices or (kind == "ground truth" and any(crosses(box, s) for s in slices)):
            continue  # a nodule drawn on a prediction's slice (a hit) needs no panel of its own
        slices.append(z)
    panels = []
    for z in slices[:max_panels]:
        marks = [
            Mark(kind, tag, (nx - 1 - x1, ny - 1 - y1, nx - 1 - x0, ny - 1 - y0), box_label(tag, world, score))
            for (kind, tag, world, score), (x0, y0, z0, x1, y1, z1) in zip(boxes, voxel)
            if crosses(np.array([x0, y0, z0, x1, y1, z1]), z)
        ]
        z_mm = float((affine @ np.array([(nx - 1) / 2, (ny - 1) / 2, z, 1.0]))[2])
        plane = volume[::-1, ::-1, z].T  # rows: anterior first; columns: the patient's right first
        panels.append(SlicePanel(z, nz, z_mm, plane, float(sy / sx), marks))
    return panels


def save_detection_png(
    output: dict[str, Any],
    path: Path,
    max_detections: int = 3,
    min_score: float = 0.5,
    nodules: list[list[float]] | None = None,
    ground_truth: str | None = None,
) -> bool:
    """Axial slices through the best detections (and through the ground-truth nodules when ``nodules`` are given;
    ``ground_truth`` names their source in the legend) with boxes, scores, world-mm centres and diameters.
    Returns False, writing nothing, when there is no box to show."""
    image = output["image"]
    affine = getattr(image, "affine", None)
    if affine is None:
        logger.warning("%s: the image has no affine, no PNG written", path)
        return False
    panels = detection_panels(
        convert_to_numpy(image, dtype=np.float64)[0],
        convert_to_numpy(affine, dtype=np.float64),
        convert_to_numpy(output["pred_box"], dtype=np.float64),
        convert_to_numpy(output["pred_score"], dtype=np.float64),
        nodules,
        max_detections,
        min_score,
    )
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    header_in, width_in = 1.3, max(4.6 * ncols, 6.0)
    height_in = 4.5 * nrows + header_in
    fig, axes = plt.subplots(nrows, ncols, figsize=(width_in, height_in), squeeze=False, dpi=100)
    fig.subplots_adjust(top=1 - header_in / height_in, bottom=0.6 / height_in, hspace=0.35)
    styles = {"prediction": (PREDICTION_COLOUR, "-"), "ground truth": (GROUND_TRUTH_COLOUR, "--")}
    for ax, p in zip(axes.ravel(), panels):
        ax.imshow(p.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect=p.pixel_aspect)
        for m in sorted(p.marks, key=lambda m: m.kind == "prediction"):  # predictions on top
            colour, style = styles[m.kind]
            c0, r0, c1, r1 = m.rect
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, edgecolor=colour, linestyle=style, lw=2))
            above = m.kind == "prediction"  # tags: predictions above their box, ground truth below
            ax.text(c0, r0 - 2 if above else r1 + 2, m.tag, color=colour, fontsize=9, fontweight="bold",
                    va="bottom" if above else "top", clip_on=True)  # fmt: skip
        ax.set_xlim(-0.5, p.image.shape[1] - 0.5)
        ax.set_ylim(p.image.shape[0] - 0.5, -0.5)
        for letter, x, ha in (("R", 0.02, "left"), ("L", 0.98, "right")):
            ax.text(x, 0.98, letter, color="white", fontsize=11, fontweight="bold", ha=ha, va="top",
                    transform=ax.transAxes)  # fmt: skip
        ax.set_title(f"axial slice {p.z} (of 0-{p.n_slices - 1}), z = {p.z_mm:.1f} mm", fontsize=10)
        ax.text(0.0, -0.02, "\n".join(m.label for m in p.marks), transform=ax.transAxes, va="top", fontsize=7.5)
        ax.axis("off")
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    top = 1 - 0.1 / height_in
    fig.text(0.01, top, str(output.get("seriesuid", "")), fontsize=10, fontweight="bold", va="top")
    fig.text(0.01, top - 0.25 / height_in, "centres in world mm (LPS, as annotations.csv); diam. = mean box side\n"
             "the patient's right (R) on the image's left, anterior up", fontsize=8.5, va="top")  # fmt: skip
    handles = [Line2D([], [], color=PREDICTION_COLOUR, lw=2, label="prediction (P1 = highest score)")]
    if ground_truth is not None:
        label = f"ground truth ({ground_truth})" if nodules else f"ground truth ({ground_truth}): no nodule"
        handles.append(Line2D([], [], color=GROUND_TRUTH_COLOUR, lw=2, linestyle="--", label=label))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, top - 0.68 / height_in), ncol=2,
               fontsize=8.5, frameon=False)  # fmt: skip
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


class DetectionWriter:
    """Writes ``<output_dir>/<seriesuid>.json`` per scan and ``<output_dir>/<csv_name>`` (submission format) once
    the run completes; with ``save_png`` also ``<seriesuid>.png`` with boxes on slices through detections.

    Ground truth on the PNGs: the item's ``nodules`` when the datalist has them (evaluation), else the rows of
    ``annotations_csv`` (a LUNA16 ``annotations.csv``, optional) for the scan's seriesuid."""

    def __init__(
        self,
        output_dir: str,
        csv_name: str = "predictions.csv",
        save_png: bool = False,
        png_min_score: float = 0.5,
        annotations_csv: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.csv_name = csv_name
        self.save_png = save_png
        self.png_min_score = png_min_score
        self.annotations_csv = annotations_csv
        self.annotations = read_annotations(annotations_csv) if save_png and annotations_csv else None
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
                nodules, source = [list(map(float, n)) for n in o.get("nodules") or []], None
                if nodules:
                    source = "datalist nodules"
                elif self.annotations is not None:
                    nodules, source = self.annotations.get(uid, []), Path(str(self.annotations_csv)).name
                save_detection_png(o, self.output_dir / f"{uid}.png", min_score=self.png_min_score,
                                   nodules=nodules, ground_truth=source)  # fmt: skip

    def completed(self, engine: Engine) -> None:
        path = write_submission(self.detections, self.output_dir / self.csv_name)
        logger.info("wrote %d detections of %d scans to %s", sum(map(len, self.detections.values())),
                    len(self.detections), path)  # fmt: skip
