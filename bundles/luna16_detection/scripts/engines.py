"""Ignite engines for RetinaNetDetector: MONAI ships SupervisedTrainer/Evaluator for networks with one output and a
loss function, but a detector takes a list of images plus target dicts and returns its own losses (training) or
box lists (inference), so the iteration is written here (after the model-zoo lung_nodule_ct_detection bundle).

Mixed precision goes through ``common.amp.AmpSettings``: autocast (bf16 on CPUs that support it, bf16/fp16 on
CUDA) around the detector call, and a gradient scaler only for CUDA fp16.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import Evaluator, Trainer
from monai.transforms import Transform

from common.amp import AmpSettings


def flatten_patches(batch: Sequence[Any]) -> list[dict[str, Any]]:
    """A ``no_collation`` batch holds one list of cropped patches per image (training) or one dict per image."""
    items: list[dict[str, Any]] = []
    for item in batch:
        items.extend(item if isinstance(item, (list, tuple)) else [item])
    return items


def detection_prepare_batch(
    batch: Sequence[Any], device: torch.device | str | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]] | None, list[dict[str, Any]]]:
    """Images, targets (``box`` in voxel xyzxyz, ``label``; empty tensors for scans without nodules), the items."""
    items = flatten_patches(batch)
    images = [torch.as_tensor(i["image"]).to(device=device, non_blocking=non_blocking) for i in items]
    targets = None
    if all("box" in i and "label" in i for i in items):
        targets = [
            {
                "box": torch.as_tensor(i["box"], dtype=torch.float32).reshape(-1, 6).to(device),
                "label": torch.as_tensor(i["label"], dtype=torch.long).reshape(-1).to(device),
            }
            for i in items
        ]
    return images, targets, items


class DetectionTrainer(Trainer):
    """Trains a ``RetinaNetDetector`` (classification + box-regression losses) one optimizer step per batch."""

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        detector: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        amp: AmpSettings,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        box_loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            prepare_batch=detection_prepare_batch,
            handlers=train_handlers,
            decollate=False,
        )
        self.detector = detector
        self.optimizer = optimizer
        self.amp_settings = amp
        self.box_loss_weight = box_loss_weight
        self.grad_scaler = torch.amp.GradScaler("cuda") if amp.grad_scaling else None

    def _iteration(self, engine: DetectionTrainer, batchdata: Sequence[Any]) -> list[dict[str, float]]:
        images, targets, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        if targets is None:
            raise ValueError("training batch without 'box'/'label' targets")
        engine.detector.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with engine.amp_settings.autocast():
            losses = engine.detector(images, targets)
        cls_loss = losses[engine.detector.cls_key].float()
        box_loss = losses[engine.detector.box_reg_key].float()
        loss = cls_loss + engine.box_loss_weight * box_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss (classification {cls_loss}, box {box_loss})")
        if engine.grad_scaler is not None:
            engine.grad_scaler.scale(loss).backward()
            engine.grad_scaler.step(engine.optimizer)
            engine.grad_scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        # MONAI's trainer output convention (a list of per-item dicts, here one for the batch), so that
        # `from_engine(['loss'], first=True)` works, as in MONAI's default MLflow/MONAI Label handler settings
        return [{"loss": loss.item(), "cls_loss": cls_loss.item(), "box_loss": box_loss.item()}]


WINDOW_RULES = ("any_side", "voxel_count")


def needs_sliding_window(shape: Sequence[int], roi_size: Sequence[int], rule: str = "any_side") -> bool:
    """Whether an image of spatial ``shape`` is run by sliding window rather than in one pass.

    ``any_side`` (this bundle): a side longer than the window, so one pass never needs more memory than a window.
    ``voxel_count`` (the model zoo's ``RetinaNetInferer``): at least as many voxels as the window; a short, wide scan
    (e.g. 580x580x140) then runs in one pass. The two differ on such scans, and so do their boxes (windows are
    stitched), so ``configs/weights_model_zoo.json`` selects the model zoo's rule to reproduce its outputs.
    """
    if rule == "any_side":
        return any(s > r for s, r in zip(shape, roi_size))
    if rule == "voxel_count":
        return math.prod(int(s) for s in shape) >= math.prod(int(r) for r in roi_size)
    raise ValueError(f"sliding window rule must be one of {WINDOW_RULES}, got {rule!r}")


class DetectorInferer:
    """Runs the detector on whole images, or by sliding window (set in ``detector_ops``) when ``window_rule`` says so
    (``needs_sliding_window``); returns per image ``{"box": voxel xyzxyz, "label", "label_scores"}`` in float32."""

    def __init__(
        self,
        detector: torch.nn.Module,
        roi_size: Sequence[int],
        amp: AmpSettings | None = None,
        force_sliding_window: bool = False,
        window_rule: str = "any_side",
    ) -> None:
        self.detector = detector
        self.roi_size = list(roi_size)
        self.amp = amp
        self.force_sliding_window = force_sliding_window
        needs_sliding_window(self.roi_size, self.roi_size, window_rule)  # an unknown rule fails here, not mid-run
        self.window_rule = window_rule

    @torch.no_grad()
    def __call__(self, images: Sequence[torch.Tensor], *args: Any, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        self.detector.eval()
        outputs = []
        for image in images:  # one at a time: images differ in size and the sliding window is per image
            whole = not needs_sliding_window(image.shape[1:], self.roi_size, self.window_rule)
            use_window = self.force_sliding_window or not whole
            if self.amp is not None:
                with self.amp.autocast():
                    pred = self.detector([image], use_inferer=use_window)[0]
            else:
                pred = self.detector([image], use_inferer=use_window)[0]
            outputs.append({k: v.float() if v.is_floating_point() else v for k, v in pred.items()})
        return outputs


class DetectionEvaluator(Evaluator):
    """Runs ``inferer`` over every scan and returns, per scan, the world-mm predictions from ``postprocessing``
    beside the datalist's world-mm ground truth (``nodules``, ``excluded``) for the FROC metric and writers."""

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        inferer: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]],
        postprocessing: Transform,
        key_val_metric: dict | None = None,
        val_handlers: Sequence | None = None,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            prepare_batch=detection_prepare_batch,
            key_val_metric=key_val_metric,
            val_handlers=val_handlers,
            decollate=False,
        )
        self.detection_inferer = inferer
        self.detection_postprocessing = postprocessing

    def _iteration(self, engine: DetectionEvaluator, batchdata: Sequence[Any]) -> list[dict[str, Any]]:
        images, _, items = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        preds = engine.detection_inferer(images)
        outputs = []
        for item, image, pred in zip(items, images, preds):
            post = engine.detection_postprocessing({**pred, "image": image})
            outputs.append(
                {
                    "seriesuid": item.get("seriesuid", ""),
                    "image": post["image"],
                    "pred_box": post["box"],  # world LPS cccwhd mm
                    "pred_box_voxel": post.get("box_voxel"),
                    "pred_score": post["label_scores"],
                    "nodules": item.get("nodules", []),
                    "excluded": item.get("excluded", []),
                }
            )
        return outputs
