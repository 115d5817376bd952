"""Assemble a MONAI Label app (sample ``monaibundle`` app + this repository's bundles) and a studies folder.

    python tools/label_app.py --out work_dirs/label [--bundles luna16_detection|all|a,b] [--sample_app <dir>]
    monailabel start_server --app work_dirs/label/app --studies work_dirs/label/studies \
        --conf models luna16_detection --conf zoo_source github --conf sam2 false \
        --conf use_pretrained_model false --host 127.0.0.1 --port 8123

Layout written under ``--out``:

- ``app/``: a copy of MONAI Label's ``sample-apps/monaibundle``; ``app/model/<bundle>/`` a copy of each bundle
  (without ``models/``, ``eval/``, caches) plus a copy of the repository's ``common`` package inside the bundle
  (MONAI Label puts only the bundle directory on ``sys.path``), and ``models/model.pt`` = ``{"model": state_dict}``:
  the demo's trained weights when ``work_dirs/demo/<bundle>/**/model.pt`` exists, else seeded random weights of
  ``network_def``.
- ``studies/``: one synthetic case per bundle, written by the bundle's own ``scripts.synthetic`` CLI and stored
  under a file name MONAI Label's datastore lists (``<bundle>_case.nii.gz`` / ``.png``).

Runs with any Python that has torch + monai (the repository's ``.venv`` or the MONAI Label environment).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
IGNORE = shutil.ignore_patterns("models", "eval", "__pycache__", "*.pyc", "runs", "work_dirs", ".pytest_cache")

_RANDOM_WEIGHTS = """
import sys, torch
from monai.bundle import ConfigParser
sys.path[:0] = ['.', sys.argv[2]]  # the bundle's scripts, the repository's common
p = ConfigParser()
p.read_config('configs/inference.json')
torch.manual_seed(0)
net = p.get_parsed_content('network_def', instantiate=True)
torch.save({'model': net.state_dict()}, sys.argv[1])
"""


def default_sample_app() -> Path:
    import monailabel  # noqa: F401  (only to locate the installed sample apps)

    for base in [Path(sys.prefix), Path(sys.prefix) / "monailabel"]:
        cand = base / "monailabel" / "sample-apps" / "monaibundle"
        if cand.is_dir():
            return cand
    raise FileNotFoundError("monailabel sample-apps/monaibundle not found; pass --sample_app")


def _run(cmd: list[str], cwd: Path) -> None:
    # the repository root on the path for ``common`` (installed in .venv, not in the MONAI Label environment)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def weights(bundle: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    trained = sorted(glob.glob(str(ROOT / "work_dirs" / "demo" / bundle.name / "**" / "model.pt"), recursive=True))
    if trained:
        import torch

        ckpt = torch.load(trained[0], map_location="cpu", weights_only=True)
        torch.save({"model": ckpt.get("model", ckpt)}, dst)
        return f"trained ({trained[0]})"
    _run([sys.executable, "-c", _RANDOM_WEIGHTS, str(dst), str(ROOT)], cwd=bundle)
    return "seeded random (torch.manual_seed(0))"


def _to_nifti(src: str, dst: Path) -> None:
    """MetaImage -> NIfTI with ITK (keeps the physical geometry); the datastore does not list .mhd."""
    import itk

    itk.imwrite(itk.imread(src), str(dst))


def synthetic_case(bundle: Path, studies: Path) -> Path:
    """One case from the bundle's own synthetic generator, stored as a single-file study."""
    studies.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if bundle.name.startswith("luna16"):
            _run(
                [sys.executable, "-m", "scripts.synthetic", "--out_dir", tmp, "--n_scans", "1", "--n_subsets", "1"]
                + ["--size", "96", "96", "48", "--empty_fraction", "0", "--seed", "0"],
                cwd=bundle,
            )
            (mhd,) = glob.glob(f"{tmp}/subset*/*.mhd")
            dst = studies / f"{bundle.name}_case.nii.gz"
            _to_nifti(mhd, dst)
        elif bundle.name.startswith("brats"):
            _run(
                [sys.executable, "-m", "scripts.synthetic", "--out_dir", tmp, "--n_cases", "1", "--seed", "0"],
                cwd=bundle,
            )
            # one 4-channel NIfTI (T1c, T1, T2, FLAIR order as in metadata channel_def): a study is one file
            import nibabel as nib
            import numpy as np

            case = sorted(p for p in Path(tmp).rglob("*") if p.is_dir() and list(p.glob("*.nii.gz")))[0]
            files = sorted(case.glob("*.nii.gz"))
            mods = {}
            for f in files:
                low = f.name.lower()
                for key in ("t1ce", "t1c", "t1n", "t1", "t2w", "t2f", "t2", "flair"):
                    if key in low.replace(".nii.gz", "").split("_")[-1] or low.endswith(f"-{key}.nii.gz"):
                        mods.setdefault(key, f)
                        break
            order = [mods.get(k) for k in (("t1ce", "t1c"), ("t1", "t1n"), ("t2", "t2w"), ("flair", "t2f")) for k in k]
            order = [f for f in order if f is not None][:4]
            imgs = [nib.load(str(f)) for f in order]
            data = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs], axis=-1)
            dst = studies / f"{bundle.name}_case.nii.gz"
            nib.save(nib.Nifti1Image(data, imgs[0].affine), str(dst))
        elif bundle.name.startswith("cxr14"):
            _run(
                [sys.executable, "-m", "scripts.synthetic", "--out_dir", tmp, "--n_patients", "1", "--n_dicom", "0"],
                cwd=bundle,
            )
            png = sorted(glob.glob(f"{tmp}/**/*.png", recursive=True))[0]
            dst = studies / f"{bundle.name}_case.png"
            shutil.copy(png, dst)
        else:
            raise ValueError(f"no synthetic case recipe for {bundle.name}")
    return dst


# MONAI Label calls ``detector(images, use_inferer=True)`` directly, so the detector's sliding window
# (roi = ``val_patch_size``, 512x512x192 for real LUNA16 scans) pads a small synthetic case to full size: minutes
# per case on a CPU. The app's copy of the bundle (never the bundle itself) gets a window that fits the study.
LABEL_OVERRIDES = {"luna16_detection": {"val_patch_size": [128, 128, 64]}}


def _override(bundle_copy: Path, overrides: dict) -> None:
    cfg = bundle_copy / "configs" / "inference.json"
    data = json.loads(cfg.read_text())
    data.update(overrides)
    cfg.write_text(json.dumps(data, indent=4))


def build(out: Path, names: list[str], sample_app: Path) -> dict:
    app = out / "app"
    if app.exists():
        shutil.rmtree(app)
    shutil.copytree(sample_app, app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    studies = out / "studies"
    if studies.exists():
        shutil.rmtree(studies)
    studies.mkdir(parents=True)
    report = {}
    for name in names:
        src = BUNDLES / name
        dst = app / "model" / name
        shutil.copytree(src, dst, ignore=IGNORE)
        shutil.copytree(ROOT / "common", dst / "common", ignore=IGNORE)
        if name in LABEL_OVERRIDES:
            _override(dst, LABEL_OVERRIDES[name])
        w = weights(src, dst / "models" / "model.pt")
        case = synthetic_case(src, studies)
        report[name] = {
            "bundle": str(dst),
            "weights": w,
            "study": case.name,
            "overrides": LABEL_OVERRIDES.get(name, {}),
        }
    (out / "label_app.json").write_text(json.dumps(report, indent=2))
    (out / "models.txt").write_text(",".join(names) + "\n")  # for `--conf models` (make label)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "work_dirs" / "label"))
    p.add_argument("--bundles", default="luna16_detection", help="comma-separated bundle names ('all': every bundle)")
    p.add_argument("--sample_app", default="")
    a = p.parse_args()
    names = [n for n in a.bundles.split(",") if n]
    if names == ["all"]:
        names = sorted(b.name for b in BUNDLES.iterdir() if (b / "configs" / "inference.json").is_file())
    sample = Path(a.sample_app) if a.sample_app else default_sample_app()
    report = build(Path(a.out), names, sample)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
