"""Inference outputs: one CSV of the 14 probabilities per image (written atomically at the end of the run) and,
optionally, Grad-CAM heatmaps (monai.visualize.GradCAM) of the top findings overlaid on the image as PNG, each with
a colour bar (0..1 of the map's maximum) and the label and probability in its title."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from common.ensemble import EnsembleInferer
from common.files import atomic_write_bytes

from .evaluation import _csv_bytes, batch_paths
from .networks import GRADCAM_LAYERS


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


GRADCAM_LAYER = GRADCAM_LAYERS["densenet121"]


def scale_to_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its own maximum, so 1 is the map's peak and 0 no evidence (an all-zero map stays zero).

    Replaces MONAI's default postprocessing for CAMs, ``default_normalizer``, which maps (min, max) to (1, 0): it
    turns the map upside down (its docstring says so), which showed the strongest evidence as the coldest colour.
    """
    peak = maps.flatten(1).amax(dim=1).view(-1, *[1] * (maps.ndim - 1))
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


class GradCAMMaps:
    """Grad-CAM (``monai.visualize.GradCAM``) of chosen labels for one image, as (k, H, W) in [0, 1] of each map's max.

    ``target_layer``: ``class_layers.relu``, the last feature maps after the final norm and ReLU, right before the
    global average pool and the linear head. There Grad-CAM equals CAM (the gradient of a logit w.r.t. these maps is
    the label's head weight over H*W at every position), so the map is ReLU(sum_k w_ck A_k) upsampled bilinearly to
    the network input, the same (rows, cols) orientation as the input (no transpose anywhere).
    The hooks are registered once per network, not per call.
    """

    def __init__(self, network: torch.nn.Module, target_layer: str = GRADCAM_LAYER) -> None:
        from monai.visualize import GradCAM

        self.network = network.module if hasattr(network, "module") else network
        self.target_layer = target_layer
        self.cam = GradCAM(nn_module=self.network, target_layers=target_layer, postprocessing=scale_to_max)

    def __call__(self, image: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
        """``image``: (C, H, W) network input; returns one map per class index, float32 (k, H, W)."""
        device = next(self.network.parameters()).device
        x = torch.as_tensor(image)[None].to(device).float()
        maps = []
        with torch.enable_grad():
            for c in class_indices:
                heat = self.cam(x=x.clone().requires_grad_(True), class_idx=int(c))
                maps.append(heat[0, 0].detach().float().cpu().numpy())
        return np.stack(maps) if maps else np.zeros((0, *x.shape[2:]), np.float32)


class GradCAMOverlay:
    """Per image, a PNG with the input and Grad-CAM of its ``top_k`` most probable findings (``top_k=0``: off).

    Each panel has a colour bar (0..1 of that map's own maximum) and the label with its probability as the title.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        label_names: Sequence[str],
        top_k: int = 0,
        target_layer: str = GRADCAM_LAYER,
        mean: float = 0.449,
        std: float = 0.226,
        path_key: str = "image_path",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.label_names = list(label_names)
        self.top_k, self.target_layer, self.mean, self.std, self.path_key = top_k, target_layer, mean, std, path_key
        self._cams: GradCAMMaps | None = None

    def attach(self, engine: Engine) -> None:
        if self.top_k > 0:
            engine.add_event_handler(Events.STARTED, self.check_single_network)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.__call__)

    def check_single_network(self, engine: Engine) -> None:
        """Refuse an ensemble's run (``configs/inference_ensemble.json``): the maps would be of the engine's network,
        which is not what the ensemble runs. Checked when the run starts (the engine's inferer is set after its
        handlers are attached)."""
        inferer = getattr(engine, "inferer", None)
        networks = inferer.networks if isinstance(inferer, EnsembleInferer) else None
        if networks is not None:
            raise ValueError(
                f"gradcam_top_k {self.top_k}: Grad-CAM shows one network, but this run ensembles {len(networks)}; "
                "run configs/inference.json with --ckpt_path models/fold<k>/model.pt for one fold's maps, "
                "or set --gradcam_top_k 0"
            )

    def __call__(self, engine: Engine) -> None:
        network = engine.network.module if hasattr(engine.network, "module") else engine.network
        if self._cams is None or self._cams.network is not network:
            self._cams = GradCAMMaps(network, self.target_layer)
        paths = batch_paths(engine, self.path_key)
        for i, item in enumerate(engine.state.output):  # decollated: one dict per image, holding its input
            probs = item["pred"].detach().float().cpu().numpy().reshape(-1)
            top = [int(c) for c in np.argsort(-probs)[: self.top_k]]
            image = torch.as_tensor(item["image"])
            maps = self._cams(image, top)
            grey = np.clip(image[0].detach().float().cpu().numpy() * self.std + self.mean, 0, 1)
            name = Path(paths[i] or f"image_{engine.state.iteration}_{i}").name + "_gradcam.png"
            titles = [f"Grad-CAM {self.label_names[c]}, p={probs[c]:.2f}" for c in top]
            atomic_write_bytes(overlay_png(grey, list(maps), titles), self.output_dir / name)


def overlay_figure(
    grey: np.ndarray,
    maps: list[np.ndarray],
    titles: list[str],
    boxes: list[list[tuple[float, float, float, float]]] | None = None,
):
    """Matplotlib figure: the input, then each map over it (``jet``, alpha 0.4, fixed scale 0..1 of the map's max)
    with its colour bar. ``boxes``: per map, rectangles (x, y, w, h) in the pixels of ``grey`` to outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.4 * (len(maps) + 1), 3.4), squeeze=False)
    axes = axes[0]
    axes[0].imshow(grey, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=9)
    axes[0].axis("off")
    for k, (ax, heat, title) in enumerate(zip(axes[1:], maps, titles)):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        shown = ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        for x, y, w, h in boxes[k] if boxes else []:
            # pixel (row i, col j) spans [j - 0.5, j + 0.5] in imshow's coordinates
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="white", lw=1.2))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, ticks=[0, 0.25, 0.5, 0.75, 1])
        bar.solids.set_alpha(1)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("fraction of the map's max", fontsize=7)
    fig.tight_layout()
    return fig


def overlay_png(
    grey: np.ndarray,
    maps: list[np.ndarray],
    titles: list[str],
    boxes: list[list[tuple[float, float, float, float]]] | None = None,
    dpi: int = 80,
) -> bytes:
    """``overlay_figure`` as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = overlay_figure(grey, maps, titles, boxes)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
