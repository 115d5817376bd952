"""The synthetic twins' pictures in the bundles' docs (``docs/twin_example.png``), drawn from what the generators
write (LUNA16: read back from the written .mhd/.raw), so the picture is what the pipeline sees.

- brats_segmentation: one axial slice through the tumour of a case at the demo size and at the real BraTS size,
  beside a case built on the real MNI152 brain (benchmarks/twin_transfer.py);
- cxr14_classification: six radiographs at 512 px (no finding, cardiomegaly, effusion, pneumothorax, nodule and
  mass, emphysema), each the first seeded patient whose findings are drawn at least moderately strong;
- luna16_detection: for two demo scans, an axial slice through a nodule, a 20 mm maximum-intensity projection
  around it (the vessel tree as tubes, the nodule as a blob) and a coronal slice, in a lung window.

    python -m tools.twin_figure --bundle brats_segmentation
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import twin_transfer  # noqa: E402
from common.files import atomic_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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
    vox_per_mm, grid = twin_transfer.template_on_grid((96, 96, 64))
    images, label = twin_transfer.make_case(synthetic, np.random.default_rng(seed + 1), grid, vox_per_mm, True)
    out.append(("MNI152 brain (real T1), painted tumour", images, label))
    return out


def draw_brats(out: Path, seed: int) -> None:
    sys.path.insert(0, str(ROOT / "bundles" / "brats_segmentation"))
    from scripts.writers import REGION_COLOURS  # the overlays' colours, so the two pictures read alike

    colours = {1: REGION_COLOURS["necrotic core"], 2: REGION_COLOURS["oedema"], 3: REGION_COLOURS["enhancing tumour"]}
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
        for value, colour in colours.items():
            overlay[axial(label, z) == value] = (*colour, 0.85)
        row[4].imshow(axial(images[3], z), cmap="gray")
        row[4].imshow(overlay)
        row[4].set_title("reference: NCR red, ED blue, ET yellow", fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    save(fig, out)


def draw_luna16(out: Path, seed: int) -> None:
    """Two demo scans of ``seed`` and ``seed + 1``: the annotated nodule nearest 5 mm and nearest 9 mm."""
    sys.path.insert(0, str(ROOT / "bundles" / "luna16_detection"))
    from matplotlib.patches import Circle

    from scripts.prepare import read_mhd_header, world_to_index
    from scripts.synthetic import generate

    window = {"cmap": "gray", "vmin": -600 - 750, "vmax": -600 + 750}  # lung window: level -600, width 1500
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 9.6))
    with tempfile.TemporaryDirectory() as tmp:
        for row, (case_seed, size_mm) in zip(axes, ((seed, 5.0), (seed + 1, 9.0))):
            root = generate(Path(tmp) / str(case_seed), n_scans=4, size=(96, 96, 48), n_subsets=1,
                            empty_fraction=0.0, max_nodules=3, seed=case_seed)  # fmt: skip
            rows = list(csv.DictReader((root / "annotations.csv").open()))
            best = min(rows, key=lambda r: abs(float(r["diameter_mm"]) - size_mm))
            mhd = root / "subset0" / f"{best['seriesuid']}.mhd"
            if not mhd.is_file():
                mhd = next(root.glob(f"subset*/{best['seriesuid']}.mhd"))
            h = read_mhd_header(mhd)
            nx, ny, nz = h["dims"]
            vol = np.fromfile(mhd.with_suffix(".raw"), "<i2").reshape(nz, ny, nx).astype(np.float32)
            sp = np.asarray(h["spacing"], float)
            world = np.array([float(best[k]) for k in ("coordX", "coordY", "coordZ")])
            d = float(best["diameter_mm"])
            i, j, k = np.round(world_to_index(h, world)).astype(int)
            row[0].imshow(vol[k], **window, extent=(0, nx * sp[0], ny * sp[1], 0))
            row[0].add_patch(
                Circle(((i + 0.5) * sp[0], (j + 0.5) * sp[1]), d / 2 + 2.5, fill=False, ec="yellow", ls="--")
            )
            row[0].set_title(f"axial slice {k}: nodule {d:.1f} mm (dashed)\nlung window L -600 W 1500", fontsize=9)
            half = int(round(10 / sp[2]))
            row[1].imshow(vol[max(k - half, 0) : k + half + 1].max(0), **window, extent=(0, nx * sp[0], ny * sp[1], 0))
            row[1].set_title(
                "maximum intensity over 20 mm around it\n(vessels: branching tubes; nodule: blob)", fontsize=9
            )
            row[2].imshow(vol[:, j, :][::-1], **window, extent=(0, nx * sp[0], 0, nz * sp[2]))
            row[2].add_patch(
                Circle(((i + 0.5) * sp[0], (k + 0.5) * sp[2]), d / 2 + 2.5, fill=False, ec="yellow", ls="--")
            )
            row[2].set_title(f"coronal slice {j} through the nodule (head up)", fontsize=9)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(f"seed {case_seed}, spacing {sp[0]:.2f} x {sp[1]:.2f} x {sp[2]:.2f} mm", fontsize=9)
    fig.tight_layout()
    save(fig, out)


def draw_cxr14(out: Path, seed: int) -> None:
    sys.path.insert(0, str(ROOT / "bundles" / "cxr14_classification"))
    from scripts import synthetic

    cases = [set(), {"Cardiomegaly"}, {"Effusion"}, {"Pneumothorax"}, {"Nodule", "Mass"}, {"Emphysema"}]
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.6))
    for ax, findings in zip(axes.ravel(), cases):
        for patient in range(seed + 7, seed + 200):
            anatomy = synthetic._Anatomy(np.random.default_rng(patient))
            probe = synthetic._scene(findings, anatomy, 64, np.random.default_rng(patient + 500))
            if all(p["s"] >= 0.6 for p in probe["params"].values()):
                break
        image = synthetic.render(findings, anatomy, 512, np.random.default_rng(patient + 500))
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(" | ".join(sorted(findings)) or "No Finding", fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    save(fig, out)


def save(fig, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)


DRAW = {"brats_segmentation": draw_brats, "cxr14_classification": draw_cxr14, "luna16_detection": draw_luna16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", choices=sorted(DRAW), required=True)
    parser.add_argument("--out", type=Path, help="default: bundles/<bundle>/docs/twin_example.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "bundles" / args.bundle / "docs" / "twin_example.png"
    DRAW[args.bundle](out, args.seed)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
