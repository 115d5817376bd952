"""The BraTS twin's picture in the bundle's docs: one axial slice through the tumour of a synthetic case at the demo
size and at the real BraTS size, beside a case built on the real MNI152 brain (benchmarks/twin_transfer.py).

    python -m tools.twin_figure --out bundles/brats_segmentation/docs/twin_example.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import twin_transfer  # noqa: E402
from common.files import atomic_path  # noqa: E402

LABEL_COLOURS = {1: (0.85, 0.2, 0.2), 2: (0.2, 0.75, 0.3), 3: (1.0, 0.85, 0.1)}  # NCR, ED, ET as in the overlays


def axial(volume: np.ndarray, z: int) -> np.ndarray:
    """An axial slice as radiologists view it: anterior up, the patient's right on the image's left (the BraTS
    grid's axis 0 runs right to left and axis 1 front to back, so the slice is shown transposed)."""
    return volume[:, :, z].T


def rows(seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    synthetic = twin_transfer.synthetic_module()
    out = []
    for size in ((96, 96, 64), (240, 240, 155)):
        images, label = synthetic.make_case(np.random.default_rng(seed), size)
        out.append((f"twin {size[0]}x{size[1]}x{size[2]} (seed {seed})", images, label))
    size = (96, 96, 64)
    vox_per_mm = np.array(size, np.float32) / np.array(synthetic.BRATS_GRID_MM, np.float32)
    grid = twin_transfer.on_twin_grid(twin_transfer.load_template(), size, vox_per_mm)
    images, label = twin_transfer.make_case(synthetic, np.random.default_rng(seed + 1), grid, vox_per_mm, True)
    out.append(("MNI152 brain (real T1), painted tumour", images, label))
    return out


def draw(out: Path, seed: int) -> None:
    synthetic = twin_transfer.synthetic_module()
    cases = rows(seed)
    fig, axes = plt.subplots(len(cases), 5, figsize=(12.5, 2.7 * len(cases)))
    for row, (title, images, label) in zip(axes, cases):
        z = int(np.round(np.argwhere(label > 0)[:, 2].mean()))
        for col, name in enumerate(synthetic.MODALITIES):
            img = axial(images[col], z)
            row[col].imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img[img > 0], 99.5))
            row[col].set_title(f"{name.upper()}" if col else f"{title}\nT1C", fontsize=9)
        overlay = np.zeros((*axial(label, z).shape, 4))
        for value, colour in LABEL_COLOURS.items():
            overlay[axial(label, z) == value] = (*colour, 0.85)
        row[4].imshow(axial(images[3], z), cmap="gray")
        row[4].imshow(overlay)
        row[4].set_title("reference: NCR red, ED green, ET yellow", fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bundles/brats_segmentation/docs/twin_example.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    draw(args.out, args.seed)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
