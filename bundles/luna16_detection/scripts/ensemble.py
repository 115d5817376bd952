"""Fold ensembles and mirroring test-time augmentation (TTA) for the nodule detector, fused on boxes.

A detector returns a different set of boxes in every pass, so passes cannot be averaged voxel by voxel as BraTS
averages probabilities: ``DetectionEnsembleInferer`` runs every pass (a fold's network x a mirror flip) through
the bundle's own ``DetectorInferer``, maps each pass's boxes back into the unflipped scan, and fuses the union.

Flips. The scan is flipped along the chosen spatial axes and the pass's voxel ``xyzxyz`` boxes are flipped back
with MONAI's ``flip_boxes``: along an axis of ``n`` voxels a box ``[x1, x2]`` becomes ``[n - x2, n - x1]``. That is
the mapping ``RandFlipBoxd`` applied to the training targets, so TTA undoes exactly the flips the detector was
taught to follow. ``"all"`` is every subset of the 3 axes, identity first (8 passes, as nnDetection); ``"axes"``
the identity and each axis alone (4 passes); an explicit list such as ``[[], [0], [1], [0, 1]]`` chooses the passes.

Fusion of the union of boxes over passes (``fusion``):

- ``"wbf"``, weighted box fusion (Solovyev et al., Image and Vision Computing 2021): boxes in descending score
  order join the fused box they overlap most when that IoU exceeds ``iou_thresh`` (else they start a cluster);
  a fused box is the score-weighted mean of its cluster's boxes, its score the mean score of the cluster times
  ``min(T, N) / N`` (T boxes in the cluster, N passes): a box that only some passes find loses score in
  proportion, which is what suppresses one-pass false positives.
- ``"nms"``: MONAI's ``batched_nms`` over the union (per label; a box keeps its own score).

Both run in voxel coordinates of the scan: IoU and score-weighted means are unchanged by the per-axis scaling to
millimetres, and the unchanged postprocessing (``ClipBoxToImaged``, ``scripts.boxes.VoxelBoxesToWorldd``) then
writes world mm. ``iou_thresh`` and ``max_detections`` default to the detector's own box selector (NMS 0.22, 300
boxes per scan), so the members' boxes are merged by the overlap at which the detector already calls two boxes one
nodule, and an ensemble of identical models without TTA returns the single model's boxes.

Finding the fold checkpoints, loading one network per checkpoint and the list of flips are shared with the other
bundles (``common.ensemble``); only what is specific to boxes lives here.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.apps.detection.transforms.box_ops import flip_boxes
from monai.data.box_utils import batched_nms, box_iou

from common.ensemble import FOLD_DIR, mirror_flips
from common.flags import as_bool
from scripts.engines import DetectorInferer

FUSIONS = ("wbf", "nms")

Prediction = dict[str, torch.Tensor]  # {"box": (M, 6) voxel xyzxyz, "label": (M,), "label_scores": (M,)}


def unflip_boxes(boxes: torch.Tensor, spatial_size: Sequence[int], axes: Sequence[int]) -> torch.Tensor:
    """Voxel ``xyzxyz`` boxes found in a scan flipped along ``axes`` -> boxes of the unflipped scan.

    A flip is its own inverse, so this is MONAI's ``flip_boxes`` (the mapping ``RandFlipBoxd`` trains with)."""
    return flip_boxes(boxes, spatial_size, tuple(axes)) if axes else boxes


def checkpoint_folds(ckpt_paths: Sequence[str | os.PathLike]) -> list[int]:
    """The fold numbers of ``models/fold{k}/model.pt`` paths (others, e.g. ``models/model.pt``, have none)."""
    folds = []
    for path in ckpt_paths:
        m = FOLD_DIR.match(Path(path).parent.name)
        if m:
            folds.append(int(m.group(1)))
    return sorted(set(folds))


def _keys(detector: Any) -> tuple[str, str, str]:
    return detector.target_box_key, detector.target_label_key, detector.pred_score_key


def fuse_nms(
    passes: Sequence[Prediction],
    iou_thresh: float,
    max_detections: int = -1,
    keys: tuple[str, str, str] = ("box", "label", "label_scores"),
) -> Prediction:
    """Non-maximum suppression (MONAI ``batched_nms``, per label) over the union of the passes' boxes."""
    box_key, label_key, score_key = keys
    boxes, labels, scores = (torch.cat([p[k] for p in passes]) for k in keys)
    keep = batched_nms(boxes, scores, labels, iou_thresh, max_proposals=max_detections)
    return {box_key: boxes[keep], label_key: labels[keep], score_key: scores[keep]}


def fuse_wbf(
    passes: Sequence[Prediction],
    iou_thresh: float,
    max_detections: int = -1,
    keys: tuple[str, str, str] = ("box", "label", "label_scores"),
) -> Prediction:
    """Weighted box fusion over the union of the passes' boxes (module doc), per label; fused boxes in descending
    score order, at most ``max_detections`` (-1: all).

    Means are taken as offsets from the cluster's first (best-scoring) box in float64, so that a cluster of equal
    boxes fuses to exactly that box and score (an ensemble of identical models equals the model)."""
    box_key, label_key, score_key = keys
    n_passes = len(passes)
    boxes, labels, scores = (torch.cat([p[k] for p in passes]) for k in keys)
    out_boxes, out_labels, out_scores = [], [], []
    for label in torch.unique(labels).tolist():
        idx = (labels == label).nonzero().flatten()
        b, s = boxes[idx].double(), scores[idx].double()
        clusters: list[list[int]] = []
        fused = torch.empty((0, b.shape[1]), dtype=b.dtype, device=b.device)
        for i in torch.argsort(s, descending=True, stable=True).tolist():
            if len(clusters):
                iou = box_iou(fused, b[i : i + 1]).flatten()
                best = int(torch.argmax(iou))
                if iou[best] > iou_thresh:
                    members = torch.tensor(clusters[best] + [i], device=b.device)
                    clusters[best].append(i)
                    ref, w = b[members[0]], s[members]
                    fused[best] = ref + (w[:, None] * (b[members] - ref)).sum(0) / w.sum()
                    continue
            clusters.append([i])
            fused = torch.cat([fused, b[i : i + 1]])
        for members, box in zip(clusters, fused):
            w = s[members]
            mean = w[0] + (w - w[0]).sum() / len(members)
            out_scores.append(mean * min(len(members), n_passes) / n_passes)
            out_boxes.append(box)
            out_labels.append(label)
    if not out_boxes:
        return {box_key: boxes[:0], label_key: labels[:0], score_key: scores[:0]}
    fused_scores = torch.stack(out_scores)
    order = torch.argsort(fused_scores, descending=True, stable=True)
    if max_detections >= 0:
        order = order[:max_detections]
    return {
        box_key: torch.stack(out_boxes)[order].to(boxes.dtype),
        label_key: torch.tensor(out_labels, dtype=labels.dtype, device=labels.device)[order],
        score_key: fused_scores[order].to(scores.dtype),
    }


FUSE = {"wbf": fuse_wbf, "nms": fuse_nms}


class DetectionEnsembleInferer:
    """Boxes of ``networks`` x mirror flips, each pass run through ``inferer``, fused (module doc).

    Args:
        inferer: the bundle's ``DetectorInferer`` (its detector, window and precision settings are used by every
            pass; each network runs in a copy of its detector).
        networks: the ensemble's networks; ``None`` uses the inferer's own detector (TTA of a single model).
        tta: mirror the scan (``flips``) in every pass; ``False`` (or "false") runs each network once.
        flips: ``"all"`` (8 passes per network in 3D), ``"axes"`` (4) or a list of axis lists, see ``mirror_flips``.
        fusion: ``"wbf"`` or ``"nms"``.
        iou_thresh: the fusion's overlap threshold; ``None``: the detector's NMS threshold.
        max_detections: boxes kept per scan; ``None``: the detector's ``detections_per_img``.

    Called like ``DetectorInferer`` (a list of (C, x, y, z) scans), it returns per scan ``{"box": voxel xyzxyz,
    "label", "label_scores"}``, so it replaces ``inferer`` / ``validate#inferer`` in the evaluators.
    """

    def __init__(
        self,
        inferer: DetectorInferer,
        networks: Sequence[torch.nn.Module] | None = None,
        tta: bool | str = True,
        flips: str | Sequence[Sequence[int]] = "all",
        fusion: str = "wbf",
        iou_thresh: float | None = None,
        max_detections: int | None = None,
        spatial_dims: int = 3,
    ) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.inferer = inferer
        self.networks = list(networks) if networks is not None else None
        if self.networks is not None and not self.networks:
            raise ValueError("networks is empty: give at least one network, or None for the inferer's own")
        self.flips = mirror_flips(flips, spatial_dims) if as_bool(tta) else [()]
        self.fusion = fusion
        self.iou_thresh = iou_thresh
        self.max_detections = max_detections
        self._members: list[DetectorInferer] | None = None

    def members(self) -> list[DetectorInferer]:
        """One inferer per network, each with a copy of the detector holding that network (built on first use,
        after the config's ``detector_ops`` have set the detector up)."""
        if self._members is None:
            if self.networks is None:
                self._members = [self.inferer]
            else:
                base = self.inferer.detector
                self._members = []
                for net in self.networks:
                    member = copy.copy(self.inferer)
                    member.detector = copy.deepcopy(base, memo={id(base.network): net})
                    self._members.append(member)
        return self._members

    def passes(self) -> int:
        """Detector runs per scan: networks x flips."""
        return (len(self.networks) if self.networks is not None else 1) * len(self.flips)

    def pass_predictions(self, image: torch.Tensor) -> list[Prediction]:
        """Every pass's boxes on one (C, x, y, z) scan, in the voxel coordinates of the unflipped scan."""
        box_key = _keys(self.inferer.detector)[0]
        size = list(image.shape[1:])
        out = []
        for member in self.members():
            for axes in self.flips:
                x = torch.flip(image, [1 + a for a in axes]) if axes else image
                pred = dict(member([x])[0])
                pred[box_key] = unflip_boxes(pred[box_key], size, axes)
                out.append(pred)
        return out

    def fuse(self, passes: Sequence[Prediction]) -> Prediction:
        """The configured fusion of one scan's passes."""
        detector = self.inferer.detector
        selector = detector.box_selector
        iou = selector.nms_thresh if self.iou_thresh is None else self.iou_thresh
        cap = selector.detections_per_img if self.max_detections is None else self.max_detections
        return FUSE[self.fusion](passes, iou, cap, _keys(detector))

    def __call__(self, images: Sequence[torch.Tensor], *args: Any, **kwargs: Any) -> list[Prediction]:
        return [self.fuse(self.pass_predictions(image)) for image in images]

    def describe(self) -> str:
        """One line for the run's log: models, flips, passes, fusion."""
        n = len(self.networks) if self.networks is not None else 1
        tta = f"{len(self.flips)} mirror flips" if len(self.flips) > 1 else "no TTA"
        return f"{n} model(s) x {tta} = {self.passes()} passes per scan, fused by {self.fusion}"
