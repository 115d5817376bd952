"""Does what the BraTS demo model learns on the synthetic twin transfer to a real brain?

No BraTS scan can be downloaded here, but nilearn ships the MNI152 2009a template: a real T1-weighted brain (the
average of 152 adults at 1 mm, skull-stripped) with grey- and white-matter probability maps. This benchmark builds
test cases on that real anatomy in the BraTS 2021 layout and scores a trained BraTS model on them:

- T1: the template's own intensities (real);
- T1c, T2, FLAIR: the template's tissue probabilities (grey matter, white matter, CSF = brain - GM - WM) mixed with
  the twin's contrast table (``scripts.synthetic.CONTRAST``): real anatomy and partial volume, modelled contrast;
- a glioma painted by the twin's tumour model (``scripts.synthetic.place_tumour``: it displaces the real anatomy
  and the template's intensities with it), then the twin's bias field and Rician noise.

The template is put on the BraTS grid and orientation (``diag(-1, -1, 1)``) and scaled like the twin, i.e. to
the demo grid as if that were 240x240x155 at 1 mm. The model is run through the bundle's documented inference
command (the demo spec's, as ``make benchmark`` does) and scored by ``benchmarks/scoring.py``. A model that learnt
what a glioma looks like, rather than the twin's cartoon brain, keeps its Dice here.

    python -m benchmarks.twin_transfer --work work_dirs/benchmark/brats_segmentation --label after \
        --out benchmarks/results/twin_transfer.json
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from benchmarks import scoring
from benchmarks.quality import benchmark_env, infer
from benchmarks.speed.harness import machine_info
from common.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "brats_segmentation"
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def synthetic_module():
    """The BraTS bundle's generator, loaded from its file under its own name: every bundle has a ``scripts``
    package, and in a process that imported another bundle's (the test suite) ``scripts.synthetic`` is not this."""
    name = "brats_segmentation_scripts_synthetic"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BUNDLE / "scripts" / "synthetic.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_template() -> dict[str, np.ndarray]:
    """MNI152 2009a T1, GM and WM from nilearn's package data in BraTS orientation (the template's RAS axes 0 and 1
    reversed, as BraTS's affine diag(-1, -1, 1) has them). T1 in 0..255, probabilities 0..1."""
    data = importlib.resources.files("nilearn") / "datasets" / "data"
    out = {}
    for name in ("t1", "gm", "wm"):
        img = nib.load(str(data / TEMPLATE.format(name)))
        if not np.allclose(np.diag(img.affine)[:3], 1.0):
            raise ValueError(f"{TEMPLATE.format(name)}: expected a 1 mm RAS template, got affine {img.affine}")
        out[name] = np.asarray(img.dataobj, np.float32)[::-1, ::-1, :]
    out["gm"] /= 255.0
    out["wm"] /= 255.0
    return out


def on_twin_grid(template: dict[str, np.ndarray], size: tuple[int, int, int], vox_per_mm: np.ndarray) -> dict:
    """Scale the 1 mm template by ``vox_per_mm`` and centre its brain in a grid of ``size``."""
    brain = template["t1"] > 0
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0) + 1
    out = {}
    for name, vol in template.items():
        crop = vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        zoomed = ndimage.zoom(crop, vox_per_mm, order=1)
        grid = np.zeros(size, np.float32)
        src, dst = [], []
        for n, s in zip(zoomed.shape, size):
            if n <= s:
                start = (s - n) // 2
                src.append(slice(0, n))
                dst.append(slice(start, start + n))
            else:  # larger than the grid (the brainstem's lowest part at small sizes): keep the top
                src.append(slice(n - s, n))
                dst.append(slice(0, s))
        grid[tuple(dst)] = zoomed[tuple(src)]
        out[name] = grid
    return out


def template_on_grid(size: tuple[int, int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(voxels per mm, the template scaled onto a grid of ``size``) as the twin's anatomy is drawn there."""
    vox_per_mm = synthetic_module().voxels_per_mm(size)
    return vox_per_mm, on_twin_grid(load_template(), size, vox_per_mm)


def make_case(synthetic, rng: np.random.Generator, grid: dict, vox_per_mm: np.ndarray, enhancing: bool):
    """(4, ...) images in the twin's modality order and the label map, on the template's anatomy."""
    brain = grid["t1"] > 5.0
    gm, wm = grid["gm"] * brain, grid["wm"] * brain
    csf = np.clip(brain - gm - wm, 0, 1)
    hard = np.stack([wm, gm, csf]).argmax(0)
    tissue = np.where(brain, np.array([synthetic.WM, synthetic.GM, synthetic.CSF], np.int8)[hard], 0).astype(np.int8)
    _, label, src = synthetic.place_tumour(rng, tissue, vox_per_mm, enhancing)

    def displace(vol: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(vol, src, order=1, mode="nearest") * brain

    gm, wm, csf, t1 = displace(gm), displace(wm), displace(csf), displace(grid["t1"])
    t1 = t1 / np.median(t1[gm > 0.7])  # grey matter = 1, the twin's reference
    contrast = synthetic.CONTRAST
    images = np.zeros((4, *brain.shape), np.float32)
    tumour = {2: "edema", 3: "enhancing", 1: "necrosis" if enhancing else "nonenhancing"}
    for m, name in enumerate(synthetic.MODALITIES):
        if name == "t1":
            img = t1
        else:
            img = gm * contrast["gm"][m] + wm * contrast["wm"][m] + csf * contrast["csf"][m]
        for value, part in tumour.items():
            img = np.where(label == value, contrast[part][m], img)
        images[m] = ndimage.gaussian_filter(img, 0.5) if name != "t1" else img
    images = np.where(label[None] > 0, ndimage.gaussian_filter(images, (0, 0.5, 0.5, 0.5)), images)
    return synthetic.acquire(rng, images, brain), label


def write_cases(out_dir: Path, n_cases: int, size: tuple[int, int, int], seed: int) -> list[Path]:
    synthetic = synthetic_module()
    vox_per_mm, grid = template_on_grid(size)
    rng = np.random.default_rng(seed)
    dirs = []
    for i in range(n_cases):
        enhancing = i % 5 != 4  # one case in five without enhancement, as in the twin
        images, label = make_case(synthetic, rng, grid, vox_per_mm, enhancing)
        dirs.append(synthetic.write_case(out_dir, i, images, label, "2021"))
    return dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "work_dirs" / "benchmark" / "brats_segmentation",
                        help="a trained demo work folder (make benchmark's or make demo's)")  # fmt: skip
    parser.add_argument("--n_cases", type=int, default=20)
    parser.add_argument("--size", default="96,96,64", help="the grid the model was trained on (demo: 96,96,64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="current", help="name of this measurement in the results file")
    parser.add_argument("--out", type=Path, help="JSON results file to add this measurement to")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(","))
    args.work = args.work.resolve()  # the bundle commands run from the bundle directory
    if not (args.work / "models" / "model.pt").is_file():
        raise SystemExit(f"{args.work}: no models/model.pt; run `make benchmark` (or make demo) first")
    cases = args.work / "transfer" / "mni_cases"
    dirs = write_cases(cases, args.n_cases, size, args.seed)
    print(f"wrote {len(dirs)} MNI152-anatomy cases of {size} to {cases}")
    pred = args.work / "transfer" / "pred"
    env = benchmark_env()
    infer(BUNDLE, args.work, cases, pred, env, None)
    pairs = [(pred / f"{d.name}_seg.nii.gz", d / f"{d.name}_seg.nii.gz") for d in dirs]
    scores = scoring.score_brats_segmentations(pairs, "2021")
    print(json.dumps(scores, indent=4))
    if args.out:
        results = json.loads(args.out.read_text()) if args.out.is_file() else {"description": __doc__.split("\n\n")[0]}
        results.setdefault("results", {})[args.label] = {
            "command": "python -m benchmarks.twin_transfer " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_info(int(env["OMP_NUM_THREADS"])),
            "data": f"{args.n_cases} cases on the MNI152 2009a template (nilearn), grid {size}, seed {args.seed}",
            "scores": scores,
        }
        write_json_atomic(results, args.out, indent=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
