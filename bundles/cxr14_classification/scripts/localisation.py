"""How well Grad-CAM localises: scores against the reference boxes of ``BBox_List_2017.csv``, with baselines.

For every boxed finding (one image, one label; several boxes of one label on one image are their union) the
Grad-CAM map of that label (``outputs.GradCAMMaps``, exactly what the overlay PNGs show) is compared with the
boxes, on the network input grid:

* pointing game: 1 if the map's maximum lies in the box (ties: the fraction of the tied maxima that do, so an
  all-zero map scores what a random pick would), else 0;
* energy in box: the fraction of the map's sum inside the box (an all-zero map: the box's area fraction).

Baselines, scored the same way: a uniform random map (i.i.d. values: its maximum is equally likely at every pixel
and every pixel holds the same expected share of the sum, so both expected scores are the box's area fraction on
the grid, computed exactly rather than sampled) and a fixed centre Gaussian (sigma a quarter of the image side).

Box convention (NIH): x, y = top-left corner, w, h, in pixels of the image file (NIH: its 1024 px PNGs; the
synthetic generator: its PNGs), pixel (row i, col j) covering [j, j+1) x [i, i+1). A grid pixel is inside when its
centre, mapped to the file's pixels, is; a box smaller than one grid pixel gets the pixel holding its centre.

Run (bundle directory): ``python -m monai.bundle run localising --config_file
"['configs/inference.json','configs/localisation.json']" --dataset_dir <NIH root> --bundle_root <run>``; writes
``eval/localisation.json`` (summary) and ``eval/localisation_boxes.csv`` (one row per boxed finding).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.files import atomic_write_bytes, write_json_atomic

from .labels import LABELS

logger = logging.getLogger(__name__)
BBOX_FILE = "BBox_List_2017.csv"
LABEL_ALIASES = {"Infiltrate": "Infiltration"}  # BBox_List_2017.csv's spelling -> the label of Data_Entry_2017.csv


class BoxFileError(ValueError):
    """A box file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Box:
    image: str
    label: str
    x: float
    y: float
    w: float
    h: float


def read_boxes(path: str | os.PathLike) -> list[Box]:
    """Rows of an NIH ``BBox_List_2017.csv``, read by position (its header ``Image Index,Finding Label,Bbox
    [x,y,w,h],,,`` splits the box column in four and adds empty ones). Labels are mapped to the 14 names
    (``Infiltrate`` -> ``Infiltration``); an unknown label, a short row or a non-positive size is an error."""
    path = Path(path)
    if not path.is_file():
        raise BoxFileError(f"{path}: box file not found (NIH ships it as {BBOX_FILE} beside Data_Entry_2017.csv)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["Image Index", "Finding Label"] or not rows[0][2:3]:
        raise BoxFileError(f"{path}: line 1 is not the NIH header 'Image Index,Finding Label,Bbox [x,y,w,h],,,'")
    boxes = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) < 6:
            raise BoxFileError(f"{path}:{line}: {len(row)} fields, need image, label, x, y, w, h")
        label = LABEL_ALIASES.get(row[1].strip(), row[1].strip())
        if label not in LABELS:
            raise BoxFileError(f"{path}:{line}: unknown finding label {row[1]!r}")
        try:
            x, y, w, h = (float(v) for v in row[2:6])
        except ValueError as e:
            raise BoxFileError(f"{path}:{line}: box values are not numbers ({e})") from e
        if not (w > 0 and h > 0 and all(math.isfinite(v) for v in (x, y, w, h))):
            raise BoxFileError(f"{path}:{line}: box {x, y, w, h} has no area")
        boxes.append(Box(row[0].strip(), label, x, y, w, h))
    return boxes


def box_mask(
    boxes: Sequence[tuple[float, float, float, float]], source_shape: Sequence[int], grid_shape: Sequence[int]
) -> np.ndarray:
    """Boolean (rows, cols) mask on ``grid_shape`` of the union of ``boxes`` (x, y, w, h in pixels of an image of
    ``source_shape`` (rows, cols)); see the module docstring for the rule."""
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    sy, sx = rows / source_shape[0], cols / source_shape[1]  # grid pixels per source pixel
    cy = (np.arange(rows) + 0.5) / sy  # grid pixel centres in source pixels
    cx = (np.arange(cols) + 0.5) / sx
    mask = np.zeros((rows, cols), dtype=bool)
    for x, y, w, h in boxes:
        inside_y = (cy >= y) & (cy < y + h)
        inside_x = (cx >= x) & (cx < x + w)
        if not inside_y.any():
            inside_y[min(max(int((y + h / 2) * sy), 0), rows - 1)] = True
        if not inside_x.any():
            inside_x[min(max(int((x + w / 2) * sx), 0), cols - 1)] = True
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


def _check(heat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != mask.shape:
        raise ValueError(f"map of shape {heat.shape} for a box mask of shape {mask.shape}")
    if not np.isfinite(heat).all() or (heat < 0).any():
        raise ValueError("a localisation map must be finite and non-negative")
    return heat


def pointing_game(heat: np.ndarray, mask: np.ndarray) -> float:
    """1.0 if the maximum of ``heat`` is inside ``mask``; with tied maxima, the fraction of them inside."""
    heat = _check(heat, mask)
    top = heat == heat.max()
    return float(mask[top].mean())


def energy_in_box(heat: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the map's sum inside ``mask`` (an all-zero map: the mask's area fraction, as a flat map)."""
    heat = _check(heat, mask)
    total = heat.sum()
    return float(heat[mask].sum() / total) if total > 0 else float(mask.mean())


def random_map_expectation(mask: np.ndarray) -> dict[str, float]:
    """Expected scores of a map of i.i.d. continuous random values: both equal the box's area fraction."""
    area = float(np.asarray(mask, dtype=bool).mean())
    return {"pointing_game": area, "energy_in_box": area}


def centre_gaussian(shape: Sequence[int], sigma: float = 0.25) -> np.ndarray:
    """A Gaussian bump at the image centre, ``sigma`` as a fraction of each side (the 'centre bias' baseline)."""
    rows, cols = int(shape[0]), int(shape[1])
    y = (np.arange(rows) + 0.5) / rows - 0.5
    x = (np.arange(cols) + 0.5) / cols - 0.5
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))


def _scores(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    return {"pointing_game": pointing_game(heat, mask), "energy_in_box": energy_in_box(heat, mask)}


def _image_shape(path: Path) -> tuple[int, int]:
    """(rows, cols) of the image file, the frame the boxes are given in (PNG/JPEG: header only)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError:
        from .io import read_cxr

        return read_cxr(path)[0].shape


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``a - b`` over the same findings, with a 95% percentile bootstrap interval (findings resampled)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    return {"mean": float(diff.mean()), "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]}


def summarise(rows: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Means per label and over all boxed findings (``overall``), the mean of the label means (``label_mean``) and,
    for Grad-CAM, its paired difference from each baseline over all findings (``minus_<baseline>``, bootstrap CI)."""
    out: dict[str, Any] = {}
    for method in methods:
        per_label = {}
        for label in [n for n in LABELS if any(r["label"] == n for r in rows)]:
            sel = [r for r in rows if r["label"] == label]
            per_label[label] = {
                "n": len(sel),
                **{k: float(np.mean([r[f"{method}/{k}"] for r in sel])) for k in ("pointing_game", "energy_in_box")},
            }
        out[method] = {
            "overall": {
                "n": len(rows),
                **{k: float(np.mean([r[f"{method}/{k}"] for r in rows])) for k in ("pointing_game", "energy_in_box")},
            },
            "label_mean": {
                k: float(np.mean([v[k] for v in per_label.values()])) for k in ("pointing_game", "energy_in_box")
            },
            "labels": per_label,
        }
        if method.startswith("gradcam:"):
            for baseline in ("random", "centre_gaussian"):
                out[method][f"minus_{baseline}"] = {
                    k: paired_difference([r[f"{method}/{k}"] for r in rows], [r[f"{baseline}/{k}"] for r in rows])
                    for k in ("pointing_game", "energy_in_box")
                }
    return out


class LocalisationScore:
    """Score Grad-CAM of ``network`` on the boxed images of ``dataset_dir`` (see the module docstring).

    ``split``: ``"test"`` scores only images of ``test_list.txt`` (weights were not trained on them), ``"all"``
    every boxed image. ``target_layers``: one layer name or several (each scored; the first is the overlay's).
    ``preprocessing``: the inference transforms (a dict ``{"image": path}`` -> network input); probabilities are
    the sigmoid of the network's outputs. ``example_labels``: for each of these labels,
    ``localisation_example_<label>.png`` shows the finding the network is most sure of (highest probability: where a
    user trusts the map most) with its reference boxes outlined. ``weights``: the checkpoint's path, for the report.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        network: torch.nn.Module,
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        output_dir: str | os.PathLike,
        label_names: Sequence[str] = LABELS,
        target_layers: str | Sequence[str] = "class_layers.relu",
        split: str = "test",
        box_file: str | os.PathLike | None = None,
        mean: float = 0.449,
        std: float = 0.226,
        example_labels: Sequence[str] = (),
        weights: str | os.PathLike | None = None,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.network, self.preprocessing = network, preprocessing
        self.output_dir = Path(output_dir)
        self.label_names = list(label_names)
        self.target_layers = [target_layers] if isinstance(target_layers, str) else list(target_layers)
        if split not in ("test", "all"):
            raise ValueError(f"split must be 'test' or 'all', got {split!r}")
        self.split = split
        self.box_file = Path(box_file) if box_file else self.dataset_dir / BBOX_FILE
        self.mean, self.std = mean, std
        self.example_labels = list(example_labels)
        self.weights = str(weights) if weights else None

    def findings(self) -> list[tuple[Path, str, list[Box]]]:
        """(image path, label, its boxes) per boxed finding of the chosen split, in file order."""
        from .prepare import index_images, read_list

        boxes = read_boxes(self.box_file)
        images = index_images(self.dataset_dir)
        keep = set(read_list(self.dataset_dir / "test_list.txt")) if self.split == "test" else None
        grouped: dict[tuple[str, str], list[Box]] = {}
        for b in boxes:
            if keep is None or b.image in keep:
                grouped.setdefault((b.image, b.label), []).append(b)
        if not grouped:
            raise BoxFileError(f"{self.box_file}: no boxed image in the {self.split!r} split (try split 'all')")
        missing = sorted({name for name, _ in grouped if name not in images})
        if missing:
            where = f"any images*/ folder of {self.dataset_dir}"
            raise BoxFileError(f"{self.box_file}: {len(missing)} boxed images are not in {where}: {missing[:5]}")
        return [(images[name], label, group) for (name, label), group in grouped.items()]

    def run(self) -> dict[str, Any]:
        from .outputs import GradCAMMaps

        cams = {layer: GradCAMMaps(self.network, layer) for layer in self.target_layers}
        methods = [f"gradcam:{layer}" for layer in self.target_layers] + ["random", "centre_gaussian"]
        findings = self.findings()
        rows: list[dict[str, Any]] = []
        by_image: dict[Path, list[tuple[str, list[Box]]]] = {}
        for path, label, group in findings:
            by_image.setdefault(path, []).append((label, group))
        candidates: dict[str, list[tuple[dict[str, Any], np.ndarray, np.ndarray, list]]] = {}
        self.network.eval()
        for path, items in by_image.items():
            image = self.preprocessing({"image": str(path)})["image"]
            grid = tuple(image.shape[-2:])
            source = _image_shape(path)
            with torch.no_grad():
                device = next(self.network.parameters()).device
                probs = torch.sigmoid(self.network(torch.as_tensor(image)[None].to(device).float()))[0].cpu().numpy()
            idx = [self.label_names.index(label) for label, _ in items]
            maps = {layer: cam(image, idx) for layer, cam in cams.items()}
            centre = centre_gaussian(grid)
            for k, (label, group) in enumerate(items):
                mask = box_mask([(b.x, b.y, b.w, b.h) for b in group], source, grid)
                row: dict[str, Any] = {
                    "image": path.name,
                    "label": label,
                    "probability": float(probs[idx[k]]),
                    "n_boxes": len(group),
                    "area_fraction": float(mask.mean()),
                }
                for layer in self.target_layers:
                    row.update({f"gradcam:{layer}/{m}": v for m, v in _scores(maps[layer][k], mask).items()})
                row.update({f"random/{m}": v for m, v in random_map_expectation(mask).items()})
                row.update({f"centre_gaussian/{m}": v for m, v in _scores(centre, mask).items()})
                rows.append(row)
                if label in self.example_labels:
                    grey = np.clip(np.asarray(image[0], dtype=np.float64) * self.std + self.mean, 0, 1)
                    scaled = [(b.x * grid[1] / source[1], b.y * grid[0] / source[0], b.w * grid[1] / source[1],
                               b.h * grid[0] / source[0]) for b in group]  # fmt: skip
                    candidates.setdefault(label, []).append((row, grey, maps[self.target_layers[0]][k], scaled))
        report = {
            "dataset_dir": str(self.dataset_dir),
            "box_file": str(self.box_file),
            "weights": self.weights,
            "split": self.split,
            "n_images": len(by_image),
            "n_findings": len(rows),
            "grid": list(grid),
            "target_layers": self.target_layers,
            "pointing_game": "max of the map inside the box (tied maxima: fraction inside)",
            "energy_in_box": "fraction of the map's sum inside the box",
            "random": "expected score of an i.i.d. random map = box area fraction on the grid (exact)",
            "centre_gaussian": "fixed Gaussian at the image centre, sigma = 0.25 of the side",
            "all": summarise(rows, methods),
            "probability_at_least_0.5": summarise([r for r in rows if r["probability"] >= 0.5], methods)
            if any(r["probability"] >= 0.5 for r in rows)
            else {},
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(report, self.output_dir / "localisation.json")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(buffer.getvalue().encode(), self.output_dir / "localisation_boxes.csv")
        for label, found in candidates.items():
            self._example(label, found)
        self._print(report, methods)
        return report

    def _example(self, label: str, found: list[tuple[dict[str, Any], np.ndarray, np.ndarray, list]]) -> None:
        """Overlay PNG of the label's most probable finding, its boxes outlined, its scores in the title."""
        from .outputs import overlay_png

        key = f"gradcam:{self.target_layers[0]}/energy_in_box"
        row, grey, heat, scaled = max(found, key=lambda f: f[0]["probability"])
        hit = row[key.replace("energy_in_box", "pointing_game")]
        title = f"{row['image']}: Grad-CAM {label}, p={row['probability']:.2f}\n"
        title += f"pointing game {hit:.2g}, energy in box {row[key]:.2f}"
        png = overlay_png(grey, [heat], [title], boxes=[scaled], dpi=72)
        atomic_write_bytes(png, self.output_dir / f"localisation_example_{label}.png")

    def _print(self, report: dict[str, Any], methods: Sequence[str]) -> None:
        print(f"localisation: {report['n_findings']} boxed findings on {report['n_images']} images ({self.split})")
        print(f"{'method':<34} {'pointing game':>13} {'energy in box':>13}")
        for m in methods:
            o = report["all"][m]["overall"]
            print(f"{m:<34} {o['pointing_game']:>13.3f} {o['energy_in_box']:>13.3f}")
        for m in methods[: len(self.target_layers)]:
            for baseline in ("random", "centre_gaussian"):
                d = report["all"][m][f"minus_{baseline}"]
                text = ", ".join(
                    f"{k} {v['mean']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for k, v in d.items()
                )
                print(f"{m} minus {baseline} (95% CI): {text}")
        print("wrote", self.output_dir / "localisation.json")
