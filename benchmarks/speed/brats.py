"""Speed of the brats_segmentation bundle against the MONAI model-zoo reference (brats_mri_segmentation) on CPU.

Reference (REFERENCE.md section 6), rebuilt from MONAI components: LoadImaged of the 4 modalities,
NormalizeIntensityd(nonzero, channel_wise), SegResNet(blocks_down=[1,2,2,4], init_filters=16), SlidingWindowInferer
(240x240x160, sw_batch_size 1, overlap 0.5) in fp32, sigmoid > 0.5, labels ET->4, else TC->1, else WT->2, SaveImaged;
training: plain Dataset, batch 1, random crop, 3 flips, intensity scale/shift, DiceLoss, Adam, fp32.
Ours: the bundle's configs/inference.json and configs/train.json as shipped (parsed with ConfigParser); on a CPU the
network runs in OpenVINO (``engine: auto``). Levers measured beside it: ``ours+torch`` (``--engine torch``),
``ours+crop`` (torch, the brain's bounding box) and ``ours+openvino_int8``.
Both get the same weights (seeded random init of the bundle's network_def) and the same synthetic case
(scripts.synthetic, 240x240x155 at 1 mm like real BraTS).

    .venv/bin/python -m benchmarks.speed.brats --out benchmarks/results/speed_brats.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.speed import harness, report
from benchmarks.speed.agreement import BRATS_REGIONS as LABEL_SETS
from benchmarks.speed.agreement import region_dice

BUNDLE = "brats_segmentation"
BUNDLE_DIR = harness.setup_paths(BUNDLE)
REGIONS = ("TC", "WT", "ET")
DEMO_WEIGHTS = harness.ROOT / "work_dirs" / "demo" / BUNDLE / "models" / "model.pt"
TIMED_CASE = "BraTS2021_00000"
CALIBRATION_DIR = Path("calibration")  # set by make_calibration_dir


def sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"case": (48, 48, 32), "n_cases": 5, "train_roi": [32, 32, 24], "ref_roi": [48, 48, 32]}
    # inference at the real BraTS size; training crop shrunk from the model zoo's 224x224x144 (one iteration of
    # that costs ~45 s per side on 2 cores) to 128^3, the same for both sides
    return {"case": (240, 240, 155), "n_cases": 5, "train_roi": [128, 128, 128], "ref_roi": [240, 240, 160]}


# ------------------------------------------------------------------------------------------------ data / metric


def make_data(work: Path, size: tuple[int, int, int], n_cases: int) -> Path:
    from scripts import synthetic

    root = work / "data"
    if not (root / f"BraTS2021_{n_cases - 1:05d}").is_dir():
        synthetic.generate(root, n_cases=n_cases, layout="2021", size=size, seed=0)
    return root


def make_calibration_dir(data_root: Path) -> Path:
    """A folder of the generated cases other than the timed one (case folders of file links: the bundle's case
    search does not follow folder links), for the int8 lever's calibration."""
    global CALIBRATION_DIR
    CALIBRATION_DIR = data_root.parent / "calibration"
    for case in sorted(data_root.glob("BraTS2021_*")):
        if case.name == TIMED_CASE:
            continue
        (CALIBRATION_DIR / case.name).mkdir(parents=True, exist_ok=True)
        for f in case.iterdir():
            if not (CALIBRATION_DIR / case.name / f.name).exists():
                (CALIBRATION_DIR / case.name / f.name).symlink_to(f.resolve())
    return CALIBRATION_DIR


def read_labels(path: Path) -> Any:
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine, img.shape


# ------------------------------------------------------------------------------------------------ pipelines


def network_def(init_filters: int = 16, dropout: float = 0.2) -> Any:
    from monai.networks.nets import SegResNet

    return SegResNet(
        blocks_down=[1, 2, 2, 4],
        blocks_up=[1, 1, 1],
        init_filters=init_filters,
        in_channels=4,
        out_channels=3,
        dropout_prob=dropout,
    )


def _labels_from_regions(x: Any) -> Any:
    """[TC, WT, ET] masks -> one label map as in the model zoo: ET -> 4, else TC -> 1, else WT -> 2."""
    import torch

    tc, wt, et = x[0] > 0.5, x[1] > 0.5, x[2] > 0.5
    out = torch.zeros_like(x[:1])
    out[0][wt] = 2
    out[0][tc] = 1
    out[0][et] = 4
    return out


def reference_evaluator(network: Any, case_dir: Path, out_dir: Path, roi: list[int]) -> Any:
    """The model-zoo inference pipeline from MONAI components (fp32, plain Dataset, SaveImaged)."""
    import numpy as np
    import torch
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Lambdad,
        LoadImaged,
        NormalizeIntensityd,
        SaveImaged,
    )

    case = case_dir.name
    item = {"image": [str(case_dir / f"{case}_{m}.nii.gz") for m in ("t1ce", "t1", "t2", "flair")]}
    pre = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    post = Compose(
        [
            Activationsd("pred", sigmoid=True),
            AsDiscreted("pred", threshold=0.5),
            Lambdad("pred", _labels_from_regions),
            SaveImaged(
                "pred",
                output_dir=str(out_dir),
                output_postfix="seg",
                output_dtype=np.uint8,
                resample=False,
                separate_folder=False,
                print_log=False,
            ),
        ]
    )
    loader = DataLoader(Dataset([item], pre), batch_size=1, num_workers=0)
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        inferer=SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=0.5),
        postprocessing=post,
    )


SMOKE_OVERRIDES: dict[str, Any] = {}  # --smoke: the window shrunk like the reference's (tiny volumes)


def our_evaluator(case_dir: Path, out_dir: Path, overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The bundle's inference.json evaluator (network, inferer, pre/postprocessing exactly as configured)."""
    overrides = {"dataset_dir": str(case_dir), "output_dir": str(out_dir), **SMOKE_OVERRIDES, **(overrides or {})}
    parser = harness.bundle_parser(BUNDLE_DIR, "inference.json", overrides)
    return parser.get_parsed_content("evaluator"), parser


def torch_lever_overrides() -> dict[str, Any]:
    """Lever measured beside the default: the network in torch (``--engine torch``; bf16 autocast + channels-last
    where the CPU has native bf16), the default engine on the CPU until version 0.3.4."""
    return {"engine": "torch"}


def crop_lever_overrides() -> dict[str, Any]:
    """Lever measured but not the default: sliding window on the brain's bounding box (scripts/inferers.py), in
    torch (so that torch's FLOP counter sees the cropped windows)."""
    return {
        "engine": "torch",
        "inferer#inferer": {
            "_target_": "benchmarks.speed.crop_inferer.ForegroundCropInferer",
            "roi_size": "@val_roi_size",
            "sw_batch_size": 1,
            "overlap": 0.5,
            "margin": 8,
        },
    }


def openvino_overrides() -> dict[str, Any]:
    """Lever measured beside the default: the network run by OpenVINO (``configs/inference_openvino.json``)."""
    return json.loads((BUNDLE_DIR / "configs" / "inference_openvino.json").read_text())


def openvino_int8_overrides() -> dict[str, Any]:
    """Lever measured beside the default: OpenVINO with NNCF int8 convolutions (``inference_openvino_int8.json``
    layered after ``inference_openvino.json``), calibrated on the benchmark's other cases, never the timed one."""
    int8 = json.loads((BUNDLE_DIR / "configs" / "inference_openvino_int8.json").read_text())
    overrides = {**openvino_overrides(), **int8}
    overrides["calibration_dir"] = str(CALIBRATION_DIR)
    if "val_roi_size" in SMOKE_OVERRIDES:  # --smoke: calibrate on the tiny window, not on 128^3 of zero padding
        overrides["calibration_roi_size"] = SMOKE_OVERRIDES["val_roi_size"]
    return overrides


def engine_precision(network: Any, amp: Any) -> str:
    """What a side's network computes in: an OpenVINO engine's precision, or the torch side's autocast dtype."""
    from common.openvino import OpenVINONetwork

    if isinstance(network, OpenVINONetwork):
        return {"f32": "fp32", "bf16": "bf16", "int8": "int8"}[network.precision]
    return harness.amp_precision(amp)


LEVERS = {
    "ours+torch": torch_lever_overrides,
    "ours+crop": crop_lever_overrides,
    "ours+openvino_int8": openvino_int8_overrides,
}


def reference_train_transforms(roi: list[int]) -> Any:
    """The model zoo's training transforms: load, BraTS classes to channels, normalise, crop, flips, intensity."""
    import numpy as np
    from monai.transforms import (
        CastToTyped,
        Compose,
        ConvertToMultiChannelBasedOnBratsClassesd,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
    )

    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            ConvertToMultiChannelBasedOnBratsClassesd("label"),
            CastToTyped("label", dtype=np.float32),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
            RandSpatialCropd(keys, roi_size=roi, random_size=False),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            RandScaleIntensityd("image", factors=0.1, prob=1.0),
            RandShiftIntensityd("image", offsets=0.1, prob=1.0),
        ]
    )


def reference_trainer(network: Any, items: list[dict], roi: list[int]) -> Any:
    """One epoch over ``items`` (the iteration count: a full epoch lets the DataLoader workers exit cleanly)."""
    import torch
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.handlers import MeanDice, from_engine
    from monai.inferers import SimpleInferer
    from monai.losses import DiceLoss
    from monai.transforms import Activationsd, AsDiscreted, Compose

    pre = reference_train_transforms(roi)
    data = [{"image": i["image"], "label": i["label"]} for i in items]
    loader = DataLoader(Dataset(data, pre), batch_size=1, shuffle=True, num_workers=4)  # model zoo: 4 workers
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, weight_decay=1e-5)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, sigmoid=True),
        inferer=SimpleInferer(),
        postprocessing=Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]),
        key_train_metric={"train_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )


def our_trainer(data_root: Path, work: Path, roi: list[int], items: list[dict]) -> tuple[Any, Any]:
    """The bundle's train.json trainer; only the crop size, the training items (one epoch = the timed
    iterations) and the run-long handlers (validation, checkpoints, TensorBoard) are overridden."""
    parser = harness.bundle_parser(
        BUNDLE_DIR,
        "train.json",
        {
            "dataset_dir": str(data_root),
            "output_dir": str(work / "ours_train"),
            "roi_size": roi,
            "epochs": 1,
            "train_datalist": items,
            "train#handlers": [],
        },
    )
    return parser.get_parsed_content("train#trainer"), parser


# ------------------------------------------------------------------------------------------------ runs


def _output_file(out_dir: Path) -> Path:
    files = sorted(out_dir.glob("*seg*.nii.gz"))
    if len(files) != 1:
        raise RuntimeError(f"{out_dir}: expected one segmentation, found {[f.name for f in files]}")
    return files[0]


def child_main(args: Any) -> None:
    """Fresh-process run of one side (inference: one case end to end; train: one short run) for peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    side, task = args.child.split(":")
    work = Path(args.work_dir)
    sz = sizes(args.smoke)
    if args.smoke:
        SMOKE_OVERRIDES["val_roi_size"] = sz["ref_roi"]
    state = torch.load(args.child_state, weights_only=True)
    data_root = work / "data"
    case_dir = data_root / TIMED_CASE
    make_calibration_dir(data_root)
    t = time.perf_counter()
    if task == "infer":
        out = work / f"child_{side}"
        if side == "reference":
            net = harness.load_state(network_def(), state)
            reference_evaluator(net, case_dir, out, sz["ref_roi"]).run()
        else:
            ev, parser = our_evaluator(case_dir, out, LEVERS[side]() if side in LEVERS else None)
            harness.load_state(parser.get_parsed_content("network"), state)
            ev.run()
    else:
        from scripts.prepare import load_split

        if side == "reference":
            items = load_split(data_root, "training")[:1]
            reference_trainer(harness.load_state(network_def(), state), items, sz["train_roi"]).run()
        else:
            items = load_split(data_root, "training")[:1]
            trainer, parser = our_trainer(data_root, work, sz["train_roi"], items)
            harness.load_state(parser.get_parsed_content("network"), state)
            trainer.run()
    harness.child_report({"side": side, "task": task, "seconds": round(time.perf_counter() - t, 2)})


def agreement_with(state: dict, init_filters: int, case_dir: Path, work: Path, roi: list[int], tag: str) -> dict:
    """Run reference, ours and the crop lever once with the given weights and compare the written label maps."""
    net = harness.load_state(network_def(init_filters, 0.0), state)
    ref_out = work / f"agree_{tag}_reference"
    reference_evaluator(net, case_dir, ref_out, roi).run()
    ref_labels, ref_affine, ref_shape = read_labels(_output_file(ref_out))
    result: dict[str, Any] = {}
    for side, ov in (("ours", {}), *((name, lever()) for name, lever in LEVERS.items())):
        out = work / f"agree_{tag}_{side}"
        ev, parser = our_evaluator(case_dir, out, {"init_filters": init_filters, **ov})
        harness.load_state(parser.get_parsed_content("network"), state)
        ev.run()
        labels, affine, shape = read_labels(_output_file(out))
        result[side] = {
            "dice": region_dice(ref_labels, labels),
            "same_shape_and_affine": bool(shape == ref_shape and abs(affine - ref_affine).max() < 1e-4),
        }
    result["reference_voxels"] = {r: int(sum((ref_labels == v).sum() for v in LABEL_SETS[r])) for r in REGIONS}
    return result


def dice_text(agreement: dict[str, Any], name: str) -> str:
    parts = []
    for key in ("random_init_weights", "demo_trained_weights"):
        if key in agreement:
            parts.append("/".join(f"{v:.3f}" for v in agreement[key][name]["dice"].values()))
    return " ; ".join(parts)


def main() -> None:  # noqa: C901 - one linear script: data, inference, agreement, training, memory, report
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.set_defaults(repeats=2, train_iters=2)  # full-size runs of ~10 min on 2 cores
    parser.add_argument(
        "--trained_weights", default=str(DEMO_WEIGHTS), help="demo-network (init_filters 8) weights for agreement"
    )
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    import torch

    work, machine, peaks = harness.start(args, "brats")
    sz = sizes(args.smoke)
    if args.smoke:
        SMOKE_OVERRIDES["val_roi_size"] = sz["ref_roi"]
    log = print
    t = time.perf_counter()
    data_root = make_data(work, sz["case"], sz["n_cases"])
    case_dir = data_root / TIMED_CASE
    make_calibration_dir(data_root)
    log(f"synthetic data {sz['n_cases']} cases of {sz['case']} in {time.perf_counter() - t:.0f} s: {data_root}")
    state = harness.seeded_state(network_def)
    state_file = work / "weights.pt"
    torch.save(state, state_file)

    # ---- inference, end to end per case (load, preprocess, infer, postprocess, write)
    ref_net = harness.load_state(network_def(), state)
    ref_out, our_out = work / "ref_out", work / "our_out"
    ref_ev = reference_evaluator(ref_net, case_dir, ref_out, sz["ref_roi"])
    our_ev, our_p = our_evaluator(case_dir, our_out)
    harness.load_state(our_p.get_parsed_content("network"), state)
    sides = {"reference": ref_ev.run, "ours": our_ev.run}
    outs = {"reference": ref_out, "ours": our_out}
    parsers = {"ours": our_p}
    for name, lever in LEVERS.items():
        outs[name] = work / f"{name.replace('+', '_')}_out"
        ev, parsers[name] = our_evaluator(case_dir, outs[name], lever())
        harness.load_state(parsers[name].get_parsed_content("network"), state)
        sides[name] = ev.run
    precision = {"reference": "fp32"}
    for name, parsed in parsers.items():
        precision[name] = engine_precision(parsed.get_parsed_content("network"), parsed.get_parsed_content("amp"))
    log("inference (end to end, one 4-modality case):")
    infer, flops = harness.interleaved_with_flops(sides, args.repeats, log=log)
    # OpenVINO's arithmetic is invisible to torch's FLOP counter: the same network on the same windows as in torch
    for name in ("ours", "ours+openvino_int8"):
        flops[name] = flops["ours+torch"]
    for name in sides:
        infer[name]["gflop"] = round(flops[name] / 1e9, 1)
    harness.set_peak_fractions(infer, flops, peaks, precision)

    ref_labels, ref_affine, ref_shape = read_labels(_output_file(ref_out))
    agreement: dict[str, Any] = {"random_init_weights": {}}
    for name, out in ((n, outs[n]) for n in ("ours", *LEVERS)):
        labels, affine, shape = read_labels(_output_file(out))
        agreement["random_init_weights"][name] = {
            "dice": region_dice(ref_labels, labels),
            "same_shape_and_affine": bool(shape == ref_shape and abs(affine - ref_affine).max() < 1e-4),
        }
    if Path(args.trained_weights).is_file() and not args.smoke:
        # random weights put many voxels near the 0.5 threshold; the demo's trained weights (init_filters 8,
        # `make demo`) give a second, more meaningful agreement check
        from common.checkpoint import load_checkpoint, model_state

        log("agreement with the demo's trained weights (init_filters 8):")
        demo_state = model_state(load_checkpoint(args.trained_weights, map_location="cpu"))
        agreement["demo_trained_weights"] = agreement_with(demo_state, 8, case_dir, work, sz["ref_roi"], "demo")

    # ---- training throughput (samples/s, data loading included)
    from scripts.prepare import load_split

    items = load_split(data_root, "training")[: args.train_iters]
    iters = len(items)
    ref_tr = reference_trainer(harness.load_state(network_def(), state), items, sz["train_roi"])
    our_tr, our_tp = our_trainer(data_root, work, sz["train_roi"], items)
    harness.load_state(our_tp.get_parsed_content("network"), state)
    tsides = {"reference": ref_tr.run, "ours": our_tr.run}
    log(f"training ({iters} iterations of batch 1, crop {sz['train_roi']}, data loading included):")
    train, flops = harness.interleaved_with_flops(tsides, args.repeats, log=log)
    for name in tsides:
        train[name]["samples_per_s"] = round(iters / train[name]["median_s"], 4)
        train[name]["gflop_per_run"] = round(flops[name] / 1e9, 1)
    harness.set_peak_fractions(
        train, flops, peaks, {"reference": "fp32", "ours": harness.amp_precision(our_tp.get_parsed_content("amp"))}
    )

    # ---- peak memory, one fresh process per side
    tasks = {"infer": ["reference", "ours", *LEVERS], "train": ["reference", "ours"]}
    memory = harness.peak_memory(__file__, args, work, state_file, tasks, log=log)

    # ---- report
    rows = [
        report.inference_row(f"inference per case, {name}", infer, name, 3.0, dice_text(agreement, name), memory)
        for name in ("ours", *LEVERS)
    ]
    rows.append(report.training_row("training samples/s", train, "ours", memory))
    table = report.table(rows, agreement="Dice vs reference TC/WT/ET (random-init / demo-trained weights)")
    harness.finish(
        "brats",
        args,
        machine,
        peaks,
        table,
        {
            "bundle": BUNDLE,
            "sizes": {
                "case": list(sz["case"]),
                "reference_roi": sz["ref_roi"],
                "train_crop": sz["train_roi"],
                "note": "inference at the real BraTS size; training crop reduced from the model zoo's 224x224x144 "
                "to keep the run within minutes on 2 cores (same crop both sides)",
            },
            "our_amp": our_p.get_parsed_content("amp").describe(),
            "inference": infer,
            "inference_speedup": harness.speedups(infer, sides),
            "agreement": agreement,
            "training": train,
            "training_speedup": harness.speedups(train, ["ours"], "samples_per_s")["ours"],
            "peak_rss_mb": memory,
        },
    )


if __name__ == "__main__":
    main()
