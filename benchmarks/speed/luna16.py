"""Speed of the luna16_detection bundle against the MONAI model-zoo reference (lung_nodule_ct_detection) on CPU.

Reference (REFERENCE.md section 6), rebuilt from MONAI components: LoadImaged (ITK, LPS->RAS), RAS orientation,
resampling to 0.703125x0.703125x1.25 mm, HU [-1024, 300] -> [0, 1]; RetinaNet with a 3D ResNet-50 FPN backbone,
anchors and box selector (score 0.02, NMS 0.22, 300 boxes) as in the model zoo, sliding-window inference with
overlap 0.25 in fp32, boxes clipped and mapped back to world cccwhd; training with the model zoo's box-aware
random crops and augmentations, SGD (Nesterov), fp32.
Ours: the bundle's configs/inference.json and configs/train.json (parsed with ConfigParser).

Reduced size (stated in the output): the model zoo's 512x512x192 inference patch costs ~60 TFLOP per window
with ResNet-50 (minutes per window and >20 GB of activations on this 2-core machine), so the patch is scaled by
1/4 to 128x128x48 for BOTH sides, and the scan is chosen so that, like a real scan against the real patch, it
fits the patch in x/y and needs two windows along z. The training patch is reduced from 192x192x80 x 4 to
64x64x32 x 2 for both sides.
Weights: seeded random init of the model zoo's network (``zoo_network``: the class and arguments of the bundle's
network_def), with the classification layer re-drawn (std 0.1, bias -3) so that a random network gives a spread of
scores above the 0.02 threshold to compare detections on.

    .venv/bin/python -m benchmarks.speed.luna16 --out benchmarks/results/speed_luna16.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.speed import harness, report
from benchmarks.speed.agreement import match_detections

BUNDLE = "luna16_detection"
BUNDLE_DIR = harness.setup_paths(BUNDLE)

# The model zoo's lung_nodule_ct_detection v0.6.8 (configs/inference.json): the reference of this benchmark and of
# bundles/luna16_detection/tests/test_luna16_import_weights.py
SPACING = (0.703125, 0.703125, 1.25)
ZOO_BACKBONE = {"spatial_dims": 3, "n_input_channels": 1, "conv1_t_stride": [2, 2, 1], "conv1_t_size": [7, 7, 7]}
ZOO_SIZE_DIVISIBLE = [16, 16, 8]
ZOO_ANCHORS = {"feature_map_scales": [1, 2, 4], "base_anchor_shapes": [[6, 8, 4], [8, 6, 5], [10, 10, 6]]}
ZOO_SELECTOR = {"score_thresh": 0.02, "topk_candidates_per_level": 1000, "nms_thresh": 0.22, "detections_per_img": 300}


def sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "scan": (48, 48, 24),
            "n_scans": 4,
            "roi": [64, 64, 32],
            "target": (48, 48, 40),
            "train_patch": [32, 32, 16],
            "train_batch": 1,
        }
    return {
        "scan": (112, 112, 48),
        "n_scans": 8,
        "roi": [128, 128, 48],
        "target": (124, 124, 80),
        "train_patch": [64, 64, 32],
        "train_batch": 2,
    }


def make_data(work: Path, size: tuple[int, int, int], n_scans: int) -> Path:
    from scripts import synthetic

    root = work / "data"
    if not (root / "annotations.csv").is_file():
        synthetic.generate(root, n_scans=n_scans, size=size, n_subsets=2, empty_fraction=0.0, max_nodules=3, seed=0)
    return root


def resampled_shape(mhd: str) -> list[int]:
    from scripts.prepare import read_mhd_header

    h = read_mhd_header(mhd)
    return [int(round(d * s / t)) for d, s, t in zip(h["dims"], h["spacing"], SPACING)]


def pick_scan(items: list[dict[str, Any]], roi: list[int], target: tuple[int, int, int]) -> dict[str, Any]:
    """The scan whose resampled shape fits ``roi`` in x/y and is closest to ``target``."""
    fits = [i for i in items if all(s <= r for s, r in zip(resampled_shape(i["image"])[:2], roi[:2]))] or items
    return min(fits, key=lambda i: sum(abs(s - t) for s, t in zip(resampled_shape(i["image"]), target)))


# ------------------------------------------------------------------------------------------------ pipelines


def zoo_network() -> Any:
    """The model zoo's RetinaNet (3D ResNet-50 FPN backbone), randomly initialised."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.networks.nets import resnet

    backbone = resnet.resnet50(**ZOO_BACKBONE)
    fe = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    return RetinaNet(
        spatial_dims=3,
        num_classes=1,
        num_anchors=3,
        feature_extractor=fe,
        size_divisible=ZOO_SIZE_DIVISIBLE,
        use_list_output=False,
    )


def detector_of(network: Any, roi: list[int], train: bool) -> Any:
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    anchors = AnchorGeneratorWithAnchorShape(**ZOO_ANCHORS)
    det = RetinaNetDetector(
        network=network, anchor_generator=anchors, spatial_dims=3, num_classes=1, size_divisible=ZOO_SIZE_DIVISIBLE
    )
    if train:
        det.set_atss_matcher(num_candidates=4, center_in_gt=False)
        det.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    det.set_target_keys(box_key="box", label_key="label")
    det.set_box_selector_parameters(**ZOO_SELECTOR)
    det.set_sliding_window_inferer(roi_size=roi, overlap=0.25, sw_batch_size=1, mode="constant", device="cpu")
    return det


def load_transforms() -> list[Any]:
    """The model zoo's preprocessing of a raw LUNA16 scan (its inference.json with ``whether_raw_luna16`` true)."""
    import torch
    from monai.transforms import (
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    return [
        LoadImaged("image", reader="ITKReader", affine_lps_to_ras=True, image_only=True),
        EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=SPACING, mode="bilinear"),
        ScaleIntensityRanged("image", a_min=-1024.0, a_max=300.0, b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped("image", dtype=torch.float32),
    ]


class ReferenceInference:
    """Model-zoo style inference of one scan: load weights, preprocess, sliding-window detector, boxes to world
    cccwhd, one JSON per scan (the zoo writes one JSON of all scans)."""

    def __init__(self, item: dict[str, Any], weights: Path, out_dir: Path, roi: list[int]) -> None:
        from monai.apps.detection.transforms.dictionary import (
            AffineBoxToWorldCoordinated,
            ClipBoxToImaged,
            ConvertBoxModed,
        )
        from monai.transforms import Compose

        self.item, self.weights, self.out_dir = item, weights, out_dir
        self.network = zoo_network()
        self.detector = detector_of(self.network, roi, train=False)
        self.pre = Compose(load_transforms())
        self.post = Compose(
            [
                ClipBoxToImaged(
                    box_keys="box", label_keys=["label", "label_scores"], box_ref_image_keys="image", remove_empty=True
                ),
                AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True),
                ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd"),
            ]
        )

    def __call__(self) -> None:
        import torch

        self.network.load_state_dict(torch.load(self.weights, weights_only=True)["model"])
        self.detector.eval()
        d = self.pre({"image": self.item["image"]})
        with torch.no_grad():
            pred = self.detector([d["image"]], use_inferer=True)[0]
        p = self.post({**pred, "image": d["image"]})
        record = {
            "seriesuid": self.item["seriesuid"],
            "boxes": p["box"].reshape(-1, 6).tolist(),
            "scores": p["label_scores"].reshape(-1).tolist(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"{self.item['seriesuid']}.json").write_text(json.dumps(record))


def our_evaluator(
    item: dict[str, Any], weights: Path, out_dir: Path, roi: list[int] | None, extra: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """The bundle's inference.json evaluator with ``weights`` loaded as its ``run`` section loads them
    (``common.checkpoint.load_weights`` of ``ckpt_path``); ``roi`` None keeps the configured window."""
    from common.checkpoint import load_weights

    overrides = {"dataset_dir": item["image"], "output_dir": str(out_dir), "ckpt_path": str(weights)}
    overrides.update({"val_patch_size": roi} if roi is not None else {})
    parser = harness.bundle_parser(BUNDLE_DIR, "inference.json", {**overrides, **(extra or {})})
    load_weights(parser.get_parsed_content("network"), parser.get_parsed_content("ckpt_path"))
    return parser.get_parsed_content("evaluator"), parser


def reference_train_transforms(patch: list[int], batch: int) -> Any:
    import torch
    from monai.apps.detection.transforms.dictionary import (
        AffineBoxToImageCoordinated,
        ClipBoxToImaged,
        ConvertBoxToStandardModed,
        RandCropBoxByPosNegLabeld,
        RandFlipBoxd,
        RandRotateBox90d,
        RandZoomBoxd,
        StandardizeEmptyBoxd,
    )
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandAdjustContrastd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    box = {"image_keys": "image", "box_keys": "box", "box_ref_image_keys": "image"}
    return Compose(
        [
            *load_transforms(),
            EnsureTyped("box", dtype=torch.float32),
            EnsureTyped("label", dtype=torch.long),
            StandardizeEmptyBoxd(box_keys="box", box_ref_image_keys="image"),
            ConvertBoxToStandardModed(box_keys="box", mode="cccwhd"),
            AffineBoxToImageCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True),
            SpatialPadd("image", spatial_size=patch, method="end"),
            RandCropBoxByPosNegLabeld(
                image_keys="image",
                box_keys="box",
                label_keys="label",
                spatial_size=patch,
                whole_box=True,
                num_samples=batch,
                pos=1,
                neg=1,
            ),
            RandZoomBoxd(**box, prob=0.2, min_zoom=0.7, max_zoom=1.4, padding_mode="constant", keep_size=True),
            ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image", remove_empty=True),
            RandFlipBoxd(**box, prob=0.5, spatial_axis=0),
            RandFlipBoxd(**box, prob=0.5, spatial_axis=1),
            RandFlipBoxd(**box, prob=0.5, spatial_axis=2),
            RandRotateBox90d(**box, prob=0.75, max_k=3, spatial_axes=(0, 1)),
            RandGaussianNoised("image", prob=0.1, mean=0.0, std=0.1),
            RandScaleIntensityd("image", factors=0.25, prob=0.15),
            RandShiftIntensityd("image", offsets=0.1, prob=0.15),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
            EnsureTyped(["image", "box"], dtype=torch.float32, track_meta=False),
            EnsureTyped("label", dtype=torch.long, track_meta=False),
        ]
    )


class ReferenceTraining:
    """One epoch over ``items`` (one scan = one iteration of ``batch`` patches), SGD as in the model zoo."""

    def __init__(self, network: Any, items: list[dict[str, Any]], patch: list[int], batch: int) -> None:
        import torch
        from monai.data import DataLoader, Dataset
        from monai.data.utils import no_collation

        self.detector = detector_of(network, [512, 512, 192], train=True)
        data = [{"image": i["image"], "box": i["box"], "label": i["label"]} for i in items]
        self.loader = DataLoader(
            Dataset(data, reference_train_transforms(patch, batch)),
            batch_size=1,
            shuffle=True,
            num_workers=4,
            collate_fn=no_collation,
        )
        self.optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-5, nesterov=True)

    def __call__(self) -> None:
        self.detector.train()
        for batch in self.loader:
            patches = [p for b in batch for p in (b if isinstance(b, list) else [b])]
            images = [p["image"] for p in patches]
            targets = [{"box": p["box"], "label": p["label"]} for p in patches]
            self.optimizer.zero_grad(set_to_none=True)
            losses = self.detector(images, targets)
            loss = losses[self.detector.cls_key] + losses[self.detector.box_reg_key]
            loss.backward()
            self.optimizer.step()


def our_trainer(items: list[dict[str, Any]], work: Path, patch: list[int], batch: int) -> tuple[Any, Any]:
    """The bundle's train.json trainer; datalist (one epoch = the timed iterations), patch/batch (reduced like the
    reference's) and run-long handlers (validation, checkpoints, TensorBoard) are overridden."""
    parser = harness.bundle_parser(
        BUNDLE_DIR,
        "train.json",
        {
            "dataset_dir": str(work / "data"),
            "output_dir": str(work / "ours_train"),
            "datalist": {"training": items, "validation": items[:1]},
            "epochs": 1,
            "warmup_epochs": 0,
            "patch_size": patch,
            "batch_size": batch,
            "train#handlers": [],
        },
    )
    return parser.get_parsed_content("train#trainer"), parser


# ------------------------------------------------------------------------------------------------ runs


def _scoring_network() -> Any:
    """The bundle's RetinaNet with a redrawn classification layer: a fresh one scores every box ~0.01, below 0.02."""
    import torch

    net = zoo_network()
    head = net.classification_head.cls_logits
    torch.nn.init.normal_(head.weight, std=0.1)
    torch.nn.init.constant_(head.bias, -3.0)
    return net


def child_main(args: Any) -> None:
    import torch

    torch.set_num_threads(args.threads)
    side, task = args.child.split(":")
    work = Path(args.work_dir)
    sz = sizes(args.smoke)
    weights = Path(args.child_state)
    items = json.loads((work / "items.json").read_text())
    t = time.perf_counter()
    if task == "infer":
        item = items["infer"]
        if side == "reference":
            ReferenceInference(item, weights, work / "child_ref", sz["roi"])()
        else:
            our_evaluator(item, weights, work / f"child_{side}", sz["roi"])[0].run()
    else:
        train_items = items["train"][:1]
        state = torch.load(weights, weights_only=True)["model"]
        if side == "reference":
            net = zoo_network()
            net.load_state_dict(state)
            ReferenceTraining(net, train_items, sz["train_patch"], sz["train_batch"])()
        else:
            trainer, parser = our_trainer(train_items, work, sz["train_patch"], sz["train_batch"])
            parser.get_parsed_content("network").load_state_dict(state)
            trainer.run()
    harness.child_report({"side": side, "task": task, "seconds": round(time.perf_counter() - t, 2)})


def main() -> None:  # noqa: C901 - one linear script: data, inference, agreement, training, memory, report
    parser = harness.base_parser(__doc__.split("\n")[0])
    parser.set_defaults(repeats=2, train_iters=2)  # full-size runs of ~10 min on 2 cores
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    import torch

    work, machine, peaks = harness.start(args, "luna16")
    sz = sizes(args.smoke)
    log = print
    t = time.perf_counter()
    root = make_data(work, sz["scan"], sz["n_scans"])
    from scripts.prepare import build_items

    all_items = build_items(root)
    item = pick_scan(all_items, sz["roi"], sz["target"])
    train_items = [i for i in all_items if i["box"] and i is not item][: args.train_iters]
    (work / "items.json").write_text(json.dumps({"infer": item, "train": train_items}, default=str))
    shape = resampled_shape(item["image"])
    log(f"synthetic data in {time.perf_counter() - t:.0f} s; inference scan {item['seriesuid']} resampled to {shape}")
    state = harness.seeded_state(_scoring_network)
    ckpt = work / "ckpt" / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, ckpt)

    ref_out, our_out = work / "ref_out", work / "our_out"
    ref_run = ReferenceInference(item, ckpt, ref_out, sz["roi"])
    our_ev, our_p = our_evaluator(item, ckpt, our_out, sz["roi"])
    sides = {"reference": ref_run, "ours": our_ev.run}
    log("inference (end to end, one scan):")
    infer, flops = harness.interleaved_with_flops(sides, args.repeats, log=log)
    for name in sides:
        infer[name]["gflop"] = round(flops[name] / 1e9, 1)
    ours = harness.amp_precision(our_p.get_parsed_content("amp"))
    harness.set_peak_fractions(infer, flops, peaks, {"reference": "fp32", "ours": ours})
    uid = item["seriesuid"]
    ref_dets = json.loads((ref_out / f"{uid}.json").read_text())
    agreement = {
        name: match_detections(ref_dets, json.loads((out / f"{uid}.json").read_text()))
        for name, out in (("ours", our_out),)
    }

    iters = len(train_items)
    net = zoo_network()
    net.load_state_dict(state)
    ref_tr = ReferenceTraining(net, train_items, sz["train_patch"], sz["train_batch"])
    our_tr, our_tp = our_trainer(train_items, work, sz["train_patch"], sz["train_batch"])
    our_tp.get_parsed_content("network").load_state_dict(state)
    tsides = {"reference": ref_tr, "ours": our_tr.run}
    log(f"training ({iters} scans x {sz['train_batch']} patches of {sz['train_patch']}, data loading included):")
    train, flops = harness.interleaved_with_flops(tsides, args.repeats, log=log)
    for name in tsides:
        train[name]["samples_per_s"] = round(iters * sz["train_batch"] / train[name]["median_s"], 4)
    harness.set_peak_fractions(
        train, flops, peaks, {"reference": "fp32", "ours": harness.amp_precision(our_tp.get_parsed_content("amp"))}
    )

    tasks = {"infer": ["reference", "ours"], "train": ["reference", "ours"]}
    memory = harness.peak_memory(__file__, args, work, ckpt, tasks, log=log)

    rows = [
        report.inference_row(
            f"inference per scan, {name}",
            infer,
            name,
            3.0,
            f"{agreement[name]['matched']}/{agreement[name]['n_reference']} reference boxes matched "
            f"({agreement[name]['n_ours']} ours)",
            memory,
        )
        for name in ("ours",)
    ]
    rows.append(report.training_row("training samples/s (patches)", train, "ours", memory))
    table = report.table(rows)
    harness.finish(
        "luna16",
        args,
        machine,
        peaks,
        table,
        {
            "bundle": BUNDLE,
            "sizes": {
                "scan_voxels_written": list(sz["scan"]),
                "scan_resampled": shape,
                "inference_patch_both_sides": sz["roi"],
                "train_patch_both_sides": sz["train_patch"],
                "train_patches_per_scan": sz["train_batch"],
                "note": "REDUCED: the model zoo's 512x512x192 inference patch and 192x192x80 x4 training patches are "
                "infeasible on 2 CPU cores; both sides use the reduced patches above",
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
