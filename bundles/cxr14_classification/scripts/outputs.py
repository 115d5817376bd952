"""Inference outputs: one CSV of the 14 probabilities per image (written atomically at the end of the run) and,
optionally, Grad-CAM heatmaps (monai.visualize.GradCAM) of the top findings overlaid on the image as PNG."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from common.files import atomic_write_bytes

from .evaluation import _csv_bytes, batch_paths


class ProbabilityCSVWriter:
    """Collect ``pred`` per image and write ``output_file`` (image, then one column per label) once, atomically."""

    def __init__(
        self, output_file: str | os.PathLike, label_names: Sequence[str], path_key: str = "image_path"
    ) -> None:
        self.output_file = Path(output_file)
        self.label_names = list(label_names)
        self.path_key = path_key
        self.rows: list[list] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for item, path in zip(engine.state.output, batch_paths(engine, self.path_key)):
            probs = item["pred"].detach().float().cpu().numpy().reshape(-1)
            if len(probs) != len(self.label_names):
                raise ValueError(f"{path}: {len(probs)} outputs for {len(self.label_names)} labels")
            self.rows.append([path, *(f"{p:.6f}" for p in probs)])

    def write(self, engine: Engine | None = None) -> None:  # noqa: ARG002
        atomic_write_bytes(_csv_bytes(["image", *self.label_names], self.rows), self.output_file)


class GradCAMOverlay:
    """Per image, a PNG with the input and Grad-CAM of its ``top_k`` most probable findings (``top_k=0``: off)."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        label_names: Sequence[str],
        top_k: int = 0,
        target_layer: str = "class_layers.relu",
        mean: float = 0.449,
        std: float = 0.226,
        path_key: str = "image_path",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.label_names = list(label_names)
        self.top_k, self.target_layer, self.mean, self.std, self.path_key = top_k, target_layer, mean, std, path_key

    def attach(self, engine: Engine) -> None:
        if self.top_k > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.__call__)

    def __call__(self, engine: Engine) -> None:
        from monai.visualize import GradCAM

        network = engine.network.module if hasattr(engine.network, "module") else engine.network
        cam = GradCAM(nn_module=network, target_layers=self.target_layer)
        device = next(network.parameters()).device
        paths = batch_paths(engine, self.path_key)
        for i, item in enumerate(engine.state.output):  # decollated: one dict per image, holding its input
            probs = item["pred"].detach().float().cpu().numpy().reshape(-1)
            top = np.argsort(-probs)[: self.top_k]
            x = torch.as_tensor(item["image"])[None].to(device).float()
            maps = []
            with torch.enable_grad():
                for c in top:
                    maps.append(cam(x=x.clone().requires_grad_(True), class_idx=int(c))[0, 0].detach().cpu().numpy())
            grey = np.clip(x[0, 0].detach().cpu().numpy() * self.std + self.mean, 0, 1)
            name = Path(paths[i] or f"image_{engine.state.iteration}_{i}").name + "_gradcam.png"
            titles = [f"{self.label_names[c]} p={probs[c]:.2f}" for c in top]
            atomic_write_bytes(_overlay_png(grey, maps, titles), self.output_dir / name)


def _overlay_png(grey: np.ndarray, maps: list[np.ndarray], titles: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3 * (len(maps) + 1), 3.2))
    axes[0].imshow(grey, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=9)
    for ax, heat, title in zip(axes[1:], maps, titles):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()
