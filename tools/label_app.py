"""Assemble a MONAI Label app (sample ``monaibundle`` app + this repository's bundles) and a studies folder.

    python tools/label_app.py --out work_dirs/label [--bundles luna16_detection|all|a,b] [--sample_app <dir>]
        [--weights_from work_dirs/demo]
    monailabel start_server --app work_dirs/label/app --studies work_dirs/label/studies \
        --conf models luna16_detection --conf zoo_source github --conf sam2 false \
        --conf use_pretrained_model false --host 127.0.0.1 --port 8123

Layout written under ``--out``:

- ``app/``: a copy of MONAI Label's ``sample-apps/monaibundle``; ``app/model/<bundle>/`` a copy of each bundle
  (without ``models/``, ``eval/``, caches) plus a copy of the repository's ``common`` package inside the bundle
  (MONAI Label puts only the bundle directory on ``sys.path``), and ``models/model.pt`` = ``{"model": state_dict}``:
  the bundle's own ``models/model.pt`` when it fits ``network_def`` (trained with the default configs), else seeded
  random weights of ``network_def``. With ``--weights_from DIR`` (``make label LABEL_WEIGHTS=work_dirs/demo``) the
  weights are ``DIR/<bundle>/models/model.pt`` of a demo run, and the app's copy of the bundle gets the demo's
  network and recipe: ``configs/demo.json`` merged into its ``inference.json`` and ``train.json`` (MONAI Label reads
  each of them alone), so the demo's weights are served and ``/train/`` fine-tunes the demo's network.
  With ``--ensemble`` (``make label LABEL_ENSEMBLE=1``) the app serves each bundle's fold ensemble with its
  test-time augmentation, as ``configs/inference_ensemble.json`` runs it (``serve_ensemble``): the fold checkpoints
  ``models/fold{k}/model.pt`` (of the bundle, or of ``--weights_from``) are copied into the app's bundle.
- ``studies/``: one synthetic case per bundle, written by the bundle's own ``scripts.synthetic`` CLI and stored
  under a file name MONAI Label's datastore lists (``<bundle>_case.nii.gz`` / ``.png``); BraTS gets two
  4-channel studies with their segmentations in ``studies/labels/final/`` so that ``/train/`` can run.

Runs with any Python that has torch + monai (the repository's ``.venv`` or the MONAI Label environment).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
IGNORE = shutil.ignore_patterns("models", "eval", "__pycache__", "*.pyc", "runs", "work_dirs", ".pytest_cache")

# Writes models/model.pt for the app: the given checkpoint if it loads into the inference network_def (strict),
# else seeded random weights; prints why a checkpoint was refused.
_WEIGHTS = """
import sys, torch
from monai.bundle import ConfigParser
sys.path[:0] = ['.', sys.argv[2]]  # the bundle's scripts, the repository's common
from common.checkpoint import CheckpointError, load_weights
p = ConfigParser()
p.read_config('configs/inference.json')
torch.manual_seed(0)
net = p.get_parsed_content('network_def', instantiate=True)
status = 'seeded random (torch.manual_seed(0))'
if sys.argv[3]:
    try:
        load_weights(net, sys.argv[3])
        status = 'trained (' + sys.argv[3] + ')'
    except CheckpointError as e:
        status = 'seeded random: REFUSED ' + str(e).splitlines()[0]
torch.save({'model': net.state_dict()}, sys.argv[1])
print(status)
"""


def default_sample_app() -> Path:
    import monailabel  # noqa: F401  (only to locate the installed sample apps)

    for base in [Path(sys.prefix), Path(sys.prefix) / "monailabel"]:
        cand = base / "monailabel" / "sample-apps" / "monaibundle"
        if cand.is_dir():
            return cand
    raise FileNotFoundError("monailabel sample-apps/monaibundle not found; pass --sample_app")


def _run(cmd: list[str], cwd: Path) -> str:
    # the repository root on the path for ``common`` (installed in .venv, not in the MONAI Label environment)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def weights(bundle: Path, dst: Path, own: Path | None = None) -> str:
    """``own`` (default: the bundle's ``models/model.pt``) if it fits the inference ``network_def`` of ``bundle``'s
    configs, else seeded random weights.

    A checkpoint that does not fit (demo weights without ``--weights_from``: the demos train smaller networks than
    the bundle's ``network_def``, which MONAI Label builds from ``inference.json``) is refused here with the reason,
    instead of failing every ``/infer/`` request later with HTTP 500.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    own = own or bundle / "models" / "model.pt"
    status = _run([sys.executable, "-c", _WEIGHTS, str(dst), str(ROOT), str(own) if own.is_file() else ""], cwd=bundle)
    status = status.strip().splitlines()[-1]
    if "REFUSED" in status:
        msg = f"WARNING {bundle.name}: {own} does not fit inference.json's network_def; serving {status}"
        print(msg, file=sys.stderr)
    return status


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
            # MONAI Label stores one file per study: the bundle's own converter stacks the 4 modalities (T1c, T1,
            # T2, FLAIR order). Two labelled studies, so that /train/ has a training and a validation case.
            _run(
                [sys.executable, "-m", "scripts.synthetic", "--out_dir", tmp, "--n_cases", "2", "--seed", "0"],
                cwd=bundle,
            )
            cases = sorted(p for p in Path(tmp).iterdir() if p.is_dir())
            for i, case in enumerate(cases):
                name = f"{bundle.name}_case" + (f"{i + 1}" if i else "")
                _run(
                    [sys.executable, "-m", "scripts.studies", "--case_dir", str(case)]
                    + ["--output", str(studies / f"{name}.nii.gz")]
                    + ["--label_output", str(studies / "labels" / "final" / f"{name}.nii.gz")],
                    cwd=bundle,
                )
            dst = studies / f"{bundle.name}_case.nii.gz"
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


# Windows sized for the small synthetic studies, in the app's copy of a bundle (never the bundle itself). MONAI Label
# calls ``detector(images, use_inferer=True)`` directly, so LUNA16's sliding window (``val_patch_size``, 512x512x192
# for real scans) would pad a 96x96x48 case to full size: minutes per case on a CPU. BraTS windows are 240x240x160
# (one window per real 240x240x155 case) and would pad a 96x96x64 study 15-fold.
LABEL_OVERRIDES = {
    "luna16_detection": {"inference.json": {"val_patch_size": [128, 128, 64]}},
    "brats_segmentation": {
        "inference.json": {"val_roi_size": [96, 96, 64]},
        "train.json": {"roi_size": [96, 96, 64], "val_roi_size": [96, 96, 64], "num_workers": 0},
    },
}


# Every app copy validates after each epoch: a MONAI Label /train/ request sets max_epochs (often a few), and with
# a longer validation interval (LUNA16's recipe: 10; the BraTS demo's: 4) no validation would run and the trained
# weights would never replace models/model.pt.
APP_TRAIN_OVERRIDES = {"train.json": {"val_interval": 1}}


def merge_demo(bundle_copy: Path) -> list[str]:
    """``configs/demo.json`` merged into the copy's ``inference.json`` and ``train.json`` with MONAI's own layering
    (``a#b`` ids included), as ``--config_file "['configs/inference.json','configs/demo.json']"`` does."""
    from monai.bundle import ConfigParser

    configs = bundle_copy / "configs"
    merged = []
    for name in ("inference.json", "train.json"):
        content = ConfigParser.load_config_files([str(configs / name), str(configs / "demo.json")])
        (configs / name).write_text(json.dumps(content, indent=4) + "\n")
        merged.append(name)
    return merged


def _rename_reference(config: dict, old: str, new: str) -> dict:
    """``config`` with every ``@old`` reference (also ``@old#key`` and inside ``$`` expressions) pointing at ``new``."""
    text = re.sub(rf"@{re.escape(old)}(?![\w])", f"@{new}", json.dumps(config))
    return json.loads(text)


def serve_ensemble(bundle_copy: Path, models_src: Path) -> dict:
    """Make the app's copy of a bundle serve its fold ensemble with test-time augmentation.

    MONAI Label builds ``inferer`` (segmentation, classification) or ``detector`` (detection) from ``inference.json``
    and calls it with the single network of ``models/model.pt``. Here the keys ``configs/inference_ensemble.json``
    adds (checkpoints, networks, flips, fusion, ``ensemble_inferer``) are merged into the copy's ``inference.json``,
    the original ``inferer``/``detector`` is renamed ``member_<key>`` (every reference follows) and ``<key>`` becomes
    ``@ensemble_inferer``, which loads every ``models/fold{k}/model.pt`` of the copy and ignores the network MONAI
    Label passes. ``models/model.pt`` is fold 0 (MONAI Label needs one to list the model). The ensemble returns the
    logit of its mean probability (``output: logit``) so that ``inference.json``'s own postprocessing (the sigmoid
    and thresholds) stays unchanged, as in the ensemble configs of BraTS. ``/train/`` fine-tunes ``model.pt`` alone;
    the folds keep serving.
    """
    from common.ensemble import fold_checkpoints

    folds = fold_checkpoints(models_src)
    if not folds:
        raise SystemExit(
            f"--ensemble: no fold*/model.pt under {models_src}; train folds first (--fold k, see the bundle's docs "
            "'Folds and ensembles'), or leave out --ensemble / LABEL_ENSEMBLE to serve models/model.pt"
        )
    copied = []
    for k, ckpt in folds.items():
        dst = bundle_copy / "models" / f"fold{k}" / "model.pt"
        status = weights(bundle_copy, dst, Path(ckpt))
        if not status.startswith("trained ("):
            raise SystemExit(f"--ensemble: {ckpt} does not fit {bundle_copy.name}'s inference network: {status}")
        copied.append(str(dst.relative_to(bundle_copy)))
    shutil.copy(bundle_copy / copied[0], bundle_copy / "models" / "model.pt")

    configs = bundle_copy / "configs"
    cfg = json.loads((configs / "inference.json").read_text())
    ensemble = json.loads((configs / "inference_ensemble.json").read_text())
    key = "detector" if "detector" in cfg else "inferer"
    member = f"member_{key}"
    cfg = _rename_reference(cfg, key, member)
    cfg[member] = cfg.pop(key)
    # only what the ensemble config adds: inference.json keeps its own pre/postprocessing, outputs and run
    added = _rename_reference({k: v for k, v in ensemble.items() if k not in cfg and "#" not in k}, key, member)
    if "output" in added["ensemble_inferer"]:
        added["ensemble_inferer"]["output"] = "logit"
    cfg.update(added)
    cfg[key] = "@ensemble_inferer"
    (configs / "inference.json").write_text(json.dumps(cfg, indent=4) + "\n")
    return {"folds": copied, "served_as": key, "tta": cfg.get("tta"), "flips": cfg.get("tta_flips")}


def _override(bundle_copy: Path, overrides: dict[str, dict]) -> None:
    for config, values in overrides.items():
        cfg = bundle_copy / "configs" / config
        data = json.loads(cfg.read_text())
        data.update(values)
        cfg.write_text(json.dumps(data, indent=4) + "\n")


# The label values the BraTS inference writes, from the bundle's own edition conventions (scripts.brats).
_BRATS_VALUES = """
import json, sys
from scripts.brats import convention
c = convention(sys.argv[1])
names = {c.necrosis: "necrotic tumour core", c.edema: "peritumoral edema", c.enhancing: "enhancing tumour"}
print(json.dumps({"0": "background", **{str(v): n for v, n in sorted(names.items())}}))
"""


def _name_brats_label_values(bundle_copy: Path) -> dict[str, str]:
    """MONAI Label names segments by the output ``channel_def`` of ``metadata.json``, which for BraTS describes
    the network's TC/WT/ET channels (0/1/2); what MONAI Label returns is the label map inference writes, with the
    edition's values (1/2/4 for 2018-2021, 1/2/3 for 2023). The app's copy names those values instead, for the
    edition the inference config writes, so that a viewer labels every segment correctly."""
    edition = json.loads((bundle_copy / "configs" / "inference.json").read_text())["default_edition"]
    channel_def = json.loads(_run([sys.executable, "-c", _BRATS_VALUES, edition], cwd=bundle_copy))
    meta_file = bundle_copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = channel_def
    meta_file.write_text(json.dumps(meta, indent=4) + "\n")
    return channel_def


def build(
    out: Path, names: list[str], sample_app: Path, weights_from: Path | None = None, ensemble: bool = False
) -> dict:
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
        demo = merge_demo(dst) if weights_from else []
        _override(dst, APP_TRAIN_OVERRIDES)
        if name in LABEL_OVERRIDES:
            _override(dst, LABEL_OVERRIDES[name])
        if name == "brats_segmentation":
            _name_brats_label_values(dst)
        own = weights_from / name / "models" / "model.pt" if weights_from else None
        if ensemble:
            served = serve_ensemble(dst, (weights_from / name if weights_from else src) / "models")
            w = f"trained fold ensemble ({', '.join(served['folds'])})"
        else:
            served = {}
            w = weights(dst, dst / "models" / "model.pt", own)
        case = synthetic_case(src, studies)
        report[name] = {
            "bundle": str(dst),
            "weights": w,
            "study": case.name,
            "overrides": {
                cfg: {**APP_TRAIN_OVERRIDES.get(cfg, {}), **LABEL_OVERRIDES.get(name, {}).get(cfg, {})}
                for cfg in sorted({*APP_TRAIN_OVERRIDES, *LABEL_OVERRIDES.get(name, {})})
            },
            "demo_merged_into": demo,
            "ensemble": served,
        }
    (out / "label_app.json").write_text(json.dumps(report, indent=2))
    (out / "models.txt").write_text(",".join(names) + "\n")  # for `--conf models` (make label)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "work_dirs" / "label"))
    p.add_argument("--bundles", default="luna16_detection", help="comma-separated bundle names ('all': every bundle)")
    p.add_argument("--sample_app", default="")
    p.add_argument("--weights_from", default="", help="a demo run's folder: serve its <bundle>/models/model.pt")
    p.add_argument("--ensemble", action="store_true", help="serve the fold ensemble (models/fold*/model.pt) with TTA")
    a = p.parse_args()
    names = [n for n in a.bundles.split(",") if n]
    if names == ["all"]:
        names = sorted(b.name for b in BUNDLES.iterdir() if (b / "configs" / "inference.json").is_file())
    sample = Path(a.sample_app).resolve() if a.sample_app else default_sample_app()
    # absolute before anything runs: helpers run with the bundle folder as working directory
    weights_from = Path(a.weights_from).resolve() if a.weights_from else None
    report = build(Path(a.out).resolve(), names, sample, weights_from, a.ensemble)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
