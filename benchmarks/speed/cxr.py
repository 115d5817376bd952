"""Speed of the cxr14_classification bundle against the CheXNet reference configuration on CPU.

Reference (CheXNet's settings, Rajpurkar et al. 2017, arXiv 1711.05225; no model-zoo bundle exists), rebuilt from
MONAI components: PNG through MONAI's LoadImaged (PIL), intensities /255, Resized to 224x224 (bilinear with
anti-aliasing, like torchvision's Resize), the bundle's per-image 1st-99th percentile scaling (so that both sides
compute the same function and only speed differs: it makes predictions independent of an export's window, issue
15), mean/std normalisation, DenseNet-121 (1 input channel, 14 sigmoid outputs) in fp32, plain Dataset,
batch 16; probabilities written to CSV. Training: plain Dataset, random horizontal flip, BCE, Adam 1e-3, batch 16.
Ours: the bundle's configs/inference.json and configs/train.json as shipped (parsed with ConfigParser).
Both get the same weights (seeded random init of the bundle's network_def) and the same synthetic images
(scripts.synthetic at 1024x1024, the size of the real NIH PNGs).

    .venv/bin/python -m benchmarks.speed.cxr --out benchmarks/results/speed_cxr.json
"""

from __future__ import annotations

import copy
import csv
import time
from pathlib import Path
from typing import Any

from benchmarks.speed import harness, report
from benchmarks.speed.agreement import mean_auroc

BUNDLE = "cxr14_classification"
BUNDLE_DIR = harness.setup_paths(BUNDLE)
MEAN, STD = 0.449, 0.226


def sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"image": 256, "n_patients": 8, "n_infer": 8, "batch": 4}
    return {"image": 1024, "n_patients": 26, "n_infer": 32, "batch": 16}


def make_data(work: Path, size: int, n_patients: int) -> Path:
    from scripts import synthetic

    root = work / "data"
    if not (root / "Data_Entry_2017.csv").is_file():
        synthetic.generate(root, n_patients=n_patients, size=size, seed=0, n_dicom=0)
    return root


def all_items(root: Path) -> list[dict[str, Any]]:
    """Every image with its 14 labels (split ignored: the benchmark only needs images and labels)."""
    from scripts.prepare import prepare_datalist

    d = prepare_datalist(root, val_fraction=0.2, seed=0)
    items = d["training"] + d["validation"] + d["test"]
    return sorted(({"image": i["image"], "label": i["label"]} for i in items), key=lambda i: i["image"])


def infer_dir(work: Path, items: list[dict[str, Any]], n: int) -> Path:
    """A folder with the first ``n`` images (symlinks), the input of both inference pipelines."""
    folder = work / "infer_images"
    folder.mkdir(parents=True, exist_ok=True)
    for it in items[:n]:
        link = folder / Path(it["image"]).name
        if not link.exists():
            link.symlink_to(it["image"])
    return folder


def read_probs(path: Path) -> dict[str, list[float]]:
    with open(path) as f:
        rows = list(csv.reader(f))
    return {Path(r[0]).name: [float(v) for v in r[1:15]] for r in rows[1:]}


# ------------------------------------------------------------------------------------------------ pipelines


def network_def() -> Any:
    from scripts.networks import cxr_network

    return cxr_network(arch="densenet121", in_channels=1, out_channels=14)


def _reference_pre(train: bool) -> Any:
    import torch
    from monai.data import PILReader
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        RandFlipd,
        Resized,
        ScaleIntensityRanged,
        ScaleIntensityRangePercentilesd,
    )

    ts = [
        # reverse_indexing=False keeps PIL's (rows, cols) order, the orientation our reader uses
        LoadImaged("image", reader=PILReader(reverse_indexing=False), image_only=True),
        EnsureChannelFirstd("image", channel_dim="no_channel"),
        ScaleIntensityRanged("image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
        Resized("image", spatial_size=(224, 224), mode="bilinear", anti_aliasing=True),
        ScaleIntensityRangePercentilesd("image", lower=1.0, upper=99.0, b_min=0.0, b_max=1.0, clip=True),
        NormalizeIntensityd("image", subtrahend=MEAN, divisor=STD),
    ]
    if train:
        ts.append(RandFlipd("image", prob=0.5, spatial_axis=1))
    ts.append(EnsureTyped(["image", "label"] if train else "image", dtype=torch.float32, track_meta=False))
    return Compose(ts)


class CSVProbabilities:
    """Reference output: one CSV row of 14 probabilities per image, written when the run completes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[list[Any]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Any) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):
            self.rows.append([item["path"], *(f"{p:.6f}" for p in out["pred"].reshape(-1).tolist())])

    def write(self, _: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows([["image", *range(14)], *self.rows])


def reference_evaluator(network: Any, folder: Path, out_file: Path, weights: Path, batch: int) -> Any:
    import torch
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.handlers import CheckpointLoader
    from monai.inferers import SimpleInferer
    from monai.transforms import Activationsd

    data = [{"image": str(p), "path": str(p)} for p in sorted(folder.iterdir())]
    pre = _reference_pre(train=False)
    loader = DataLoader(Dataset(data, pre), batch_size=batch, num_workers=2)
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        inferer=SimpleInferer(),
        postprocessing=Activationsd("pred", sigmoid=True),
        val_handlers=[
            CheckpointLoader(load_path=str(weights), load_dict={"model": network}, map_location="cpu"),
            CSVProbabilities(out_file),
        ],
    )


def our_evaluator(folder: Path, out_dir: Path, weights: Path, extra: dict[str, Any] | None = None) -> tuple[Any, Any]:
    parser = harness.bundle_parser(
        BUNDLE_DIR,
        "inference.json",
        {"dataset_dir": str(folder), "output_dir": str(out_dir), "ckpt_path": str(weights), **(extra or {})},
    )
    return parser.get_parsed_content("evaluator"), parser


def onnxruntime_network(network: Any, threads: int) -> Any:
    """Lever (measured, not a bundle default): the loaded torch network exported once to ONNX (torch's legacy
    exporter) and run by ONNX Runtime's CPU provider; a torch Module so MONAI's engines can call it."""
    import io

    import onnxruntime as ort
    import torch

    network = copy.deepcopy(network).eval().to(memory_format=torch.contiguous_format)
    buf = io.BytesIO()
    torch.onnx.export(
        network,
        (torch.zeros(1, 1, 224, 224),),
        buf,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    class OrtNetwork(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"x": x.float().contiguous().numpy()})[0])

    return OrtNetwork()


def reference_trainer(network: Any, items: list[dict[str, Any]], batch: int) -> Any:
    import torch
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer

    loader = DataLoader(
        Dataset(items, _reference_pre(train=True)), batch_size=batch, shuffle=True, num_workers=4, drop_last=True
    )
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=1e-3, betas=(0.9, 0.999)),
        loss_function=torch.nn.BCEWithLogitsLoss(),
        inferer=SimpleInferer(),
    )


def our_trainer(
    items: list[dict[str, Any]], work: Path, batch: int, extra: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """The bundle's train.json trainer; the datalist (one epoch = the timed iterations), the batch size (smoke
    only) and the run-long handlers (validation, LR schedule on validation AUROC, TensorBoard) are overridden."""
    overrides: dict[str, Any] = {
        "dataset_dir": str(work / "data"),
        "output_dir": str(work / "ours_train"),
        "datalist": {"training": items, "validation": items[:batch]},
        "max_epochs": 1,
        "train#handlers": [],
        **(extra or {}),
    }
    if batch != 16:
        overrides["batch_size"] = batch
    parser = harness.bundle_parser(BUNDLE_DIR, "train.json", overrides)
    return parser.get_parsed_content("train#trainer"), parser


# ------------------------------------------------------------------------------------------------ runs


def child_main(args: Any) -> None:
    import torch

    torch.set_num_threads(args.threads)
    side, task = args.child.split(":")
    work = Path(args.work_dir)
    sz = sizes(args.smoke)
    weights = Path(args.child_state)
    state = torch.load(weights, weights_only=True)["model"]
    t = time.perf_counter()
    if task == "infer":
        folder = work / "infer_images"
        if side == "reference":
            reference_evaluator(network_def(), folder, work / "child_ref.csv", weights, sz["batch"]).run()
        else:
            our_evaluator(folder, work / "child_ours", weights)[0].run()
    else:
        items = all_items(work / "data")[: sz["batch"]]
        if side == "reference":
            reference_trainer(harness.load_state(network_def(), state), items, sz["batch"]).run()
        else:
            trainer, parser = our_trainer(items, work, sz["batch"])
            harness.load_state(parser.get_parsed_content("network"), state)
            trainer.run()
    harness.child_report({"side": side, "task": task, "seconds": round(time.perf_counter() - t, 2)})


def main() -> None:  # noqa: C901 - one linear script: data, inference, agreement, training, memory, report
    args = harness.base_parser(__doc__.split("\n")[0]).parse_args()
    if args.child:
        child_main(args)
        return
    import torch

    work, machine, peaks = harness.start(args, "cxr")
    sz = sizes(args.smoke)
    log = print
    t = time.perf_counter()
    root = make_data(work, sz["image"], sz["n_patients"])
    items = all_items(root)
    folder = infer_dir(work, items, sz["n_infer"])
    n_infer = len(list(folder.iterdir()))
    log(
        f"synthetic data: {len(items)} images of {sz['image']} px in {time.perf_counter() - t:.0f} s; "
        f"inference on {n_infer}"
    )
    state = harness.seeded_state(network_def)
    weights = work / "weights.pt"
    torch.save({"model": state}, weights)

    # ---- inference over a folder of images (load, preprocess, infer, postprocess, write CSV); per image
    ref_csv, our_dir = work / "ref_out" / "predictions.csv", work / "our_out"
    ref_ev = reference_evaluator(network_def(), folder, ref_csv, weights, sz["batch"])
    our_ev, our_p = our_evaluator(folder, our_dir, weights)
    harness.load_state(our_p.get_parsed_content("network"), state)
    ort_ev, _ = our_evaluator(folder, work / "ort_out", weights)
    ort_ev.network = onnxruntime_network(our_p.get_parsed_content("network"), args.threads)
    sides = {"reference": ref_ev.run, "ours": our_ev.run, "ours+onnxruntime": ort_ev.run}
    log(f"inference (end to end over {n_infer} images):")
    infer, flops = harness.interleaved_with_flops(sides, args.repeats, log=log)
    flops["ours+onnxruntime"] = flops["ours"]  # same network; ONNX Runtime's ops are invisible to torch's counter
    for name in sides:
        infer[name]["per_image_s"] = round(infer[name]["median_s"] / n_infer, 4)
        infer[name]["gflop"] = round(flops[name] / 1e9, 1)
    ours = harness.amp_precision(our_p.get_parsed_content("amp"))
    # ONNX Runtime's CPU provider computes this network in fp32
    harness.set_peak_fractions(infer, flops, peaks, {"reference": "fp32", "ours": ours, "ours+onnxruntime": "fp32"})

    labels = {Path(i["image"]).name: i["label"] for i in items}
    ref_probs = read_probs(ref_csv)
    lab = {n: labels[n] for n in ref_probs}
    ref_auc = mean_auroc(ref_probs, lab)
    agreement: dict[str, Any] = {
        "mean_auroc_reference": round(ref_auc, 4),
        "note": "random-init weights: AUROC near chance by design; what matters is that the pipelines agree",
    }
    for name, path in (
        ("ours", our_dir / "predictions.csv"),
        ("ours+onnxruntime", work / "ort_out" / "predictions.csv"),
    ):
        probs = read_probs(path)
        if set(ref_probs) != set(probs):
            raise RuntimeError(f"{name} scored different images than the reference: {set(ref_probs) ^ set(probs)}")
        auc = mean_auroc(probs, lab)
        agreement[name] = {
            "mean_auroc": round(auc, 4),
            "mean_auroc_abs_diff": round(abs(ref_auc - auc), 4),
            "max_abs_probability_diff": round(
                max(abs(a - b) for n in ref_probs for a, b in zip(ref_probs[n], probs[n])), 4
            ),
        }

    # ---- training throughput
    n_train = sz["batch"] * args.train_iters
    train_items = items[:n_train]
    iters = len(train_items) // sz["batch"]
    ref_tr = reference_trainer(harness.load_state(network_def(), state), train_items, sz["batch"])
    our_tr, our_tp = our_trainer(train_items, work, sz["batch"])
    harness.load_state(our_tp.get_parsed_content("network"), state)
    # lever: the bundle's own cache_rate parameter (deterministic load/resize/normalise cached in RAM, filled
    # before timing, i.e. epochs after the first); 224^2 float32 per image = 22 GB for all of CXR14
    cache_tr, cache_tp = our_trainer(train_items, work, sz["batch"], {"cache_rate": 1.0, "num_workers": 0})
    harness.load_state(cache_tp.get_parsed_content("network"), state)
    tsides = {"reference": ref_tr.run, "ours": our_tr.run, "ours+cache": cache_tr.run}
    log(f"training ({iters} iterations of batch {sz['batch']}, data loading included):")
    train, flops = harness.interleaved_with_flops(tsides, args.repeats, log=log)
    for name in tsides:
        train[name]["samples_per_s"] = round(iters * sz["batch"] / train[name]["median_s"], 3)
    ours = harness.amp_precision(our_tp.get_parsed_content("amp"))
    harness.set_peak_fractions(train, flops, peaks, {"reference": "fp32", "ours": ours, "ours+cache": ours})

    # the levers (ONNX Runtime, cache) get no fresh-process memory run: "-" in the table
    tasks = {"infer": ["reference", "ours"], "train": ["reference", "ours"]}
    memory = harness.peak_memory(__file__, args, work, weights, tasks, log=log)

    rows = [
        report.inference_row(
            f"inference s/image, {name}",
            infer,
            name,
            2.5,
            f"AUROC {ref_auc:.4f} vs {agreement[name]['mean_auroc']:.4f} "
            f"(diff {agreement[name]['mean_auroc_abs_diff']:.4f})",
            memory if name == "ours" else None,
            per="per_image_s",
        )
        for name in ("ours", "ours+onnxruntime")
    ]
    rows += [
        report.training_row(f"training samples/s, {name}", train, name, memory if name == "ours" else None)
        for name in ("ours", "ours+cache")
    ]
    table = report.table(rows)
    harness.finish(
        "cxr",
        args,
        machine,
        peaks,
        table,
        {
            "bundle": BUNDLE,
            "sizes": {
                "image_px": sz["image"],
                "n_inference_images": n_infer,
                "batch": sz["batch"],
                "train_iters": iters,
            },
            "our_amp": our_p.get_parsed_content("amp").describe(),
            "inference": infer,
            "inference_speedup": harness.speedups(infer, sides),
            "agreement": agreement,
            "training": train,
            "training_speedup": harness.speedups(train, tsides, "samples_per_s"),
            "peak_rss_mb": memory,
        },
    )


if __name__ == "__main__":
    main()
