"""The networks the literature compares, against each bundle's default, on the ensemble benchmark's data (issue 19).

    python -m benchmarks.networks                                    # every alternative below, seeds 0 1 2
    python -m benchmarks.networks --bundles brats_segmentation --seeds 0

Alternatives (``NETWORKS``): BraTS ``configs/network_unet.json`` (MONAI ``DynUNet``, nnU-Net's plain U-Net) beside
SegResNet; CXR14 ``configs/network_resnet50.json`` (ResNet-50) and ``--arch densenet121`` (DenseNet-121, the
full-size default) beside the demo's small DenseNet.

Protocol, per alternative and training seed: fold 0 of ``benchmarks.ensemble``'s folds on its synthetic set
(``<work_dir>/<bundle>/dataset``, the same data, split, fold and recipe: ``configs/train.json`` +
``configs/demo.json`` + the alternative), trained in ``<work_dir>/<bundle>/networks/<name>/seed<s>`` and scored by
``evaluate.json`` on the same test set. The default network's figures are the same seed's fold 0 in
``benchmarks/results/ensemble.json`` (only the network differs), so each difference is paired by seed; the run
refuses an ensemble.json measured with other settings.

Speed, measured in this run: inference seconds per preprocessed test item of the default network (the ensemble
run's fold 0 weights) and each alternative (its trained weights), the inferer of ``inference.json`` +
``configs/demo.json`` (+ the alternative), fastest of ``--repeats`` interleaved runs, in one child process per
bundle (each bundle has its own ``scripts`` package); parameter counts. Training wall time of each fold is
reported as measured, without a ratio (the default's was measured in another run).

Writes ``{"<bundle>": {"<name>": {"override", "default", "alternative", "difference", "speed", ...}}}`` to ``--out``
(``benchmarks/results/networks.json``); bundles not run are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.ensemble import (
    BRATS,
    BUNDLE_RUN,
    CXR14,
    EVAL_CFG,
    ROOT,
    TRAIN_CFG,
    across_seeds,
    brats_dataset,
    build_parser,
    bundle_parser,
    cxr14_dataset,
    in_process,
    read_cxr14_metrics,
    read_metrics,
    run,
    run_settings,
    time_modes,
    train_folds,
)
from benchmarks.quality import benchmark_env
from benchmarks.speed.harness import machine_info
from common.files import write_json_atomic

# bundle -> name -> (override config file or None, extra arguments for every command)
NETWORKS: dict[str, dict[str, tuple[str | None, list[str]]]] = {
    "brats_segmentation": {"dynunet": ("configs/network_unet.json", [])},
    "cxr14_classification": {
        "resnet50": ("configs/network_resnet50.json", []),
        "densenet121": (None, ["--arch", "densenet121"]),
    },
}
HEADLINE = {"brats_segmentation": ("test_dice", "test_hd95"), "cxr14_classification": ("mean_auroc",)}


def with_override(config: str, override: str | None) -> str:
    """A ``--config_file`` list with ``override`` appended (layered last)."""
    return config if override is None else config[:-1] + f",'{override}']"


def fold0(args: argparse.Namespace, bundle: str, name: str, seed: int) -> dict[str, Any]:
    """Train and score fold 0 of ``bundle`` with the alternative ``name`` for one training seed."""
    override, extra = NETWORKS[bundle][name]
    env = benchmark_env()
    log: list[dict[str, Any]] = []
    if bundle == "brats_segmentation":
        path, dataset = BRATS, brats_dataset(args, env, log)
        roi = json.dumps(args.val_roi_size, separators=(",", ":"))
        common = ["--dataset_dir", str(dataset), "--val_roi_size", roi, "--num_folds", str(args.folds)]
        recipe = ["--epochs", str(args.epochs), "--val_interval", str(args.val_interval)]
        scoring = ["--engine", "torch"]  # as the ensemble benchmark's default fold 0 it is paired with
        read = read_metrics
    else:
        path, dataset = CXR14, cxr14_dataset(args, env, log)
        common = ["--dataset_dir", str(dataset), "--num_folds", str(args.folds)]
        recipe = ["--max_epochs", str(args.cxr_epochs)]
        scoring = []
        read = read_cxr14_metrics
    work = dataset.parent / "networks" / name / f"seed{seed}"
    common += ["--bundle_root", str(work), *extra]
    seconds = train_folds(path, work, range(1), lambda k: [*common, "--fold", "0", *recipe, "--seed", str(seed)],
                          args.retrain, env, log, config=with_override(TRAIN_CFG, override))  # fmt: skip
    out = work / "eval" / "single_fold0"
    config = with_override(EVAL_CFG, override)
    cmd = [*BUNDLE_RUN, "evaluating", "--config_file", config, *common, "--fold", "0", "--output_dir", str(out)]
    run([*cmd, *scoring], path, env, log)
    return {**read(out), "training_seconds": [round(s, 1) for s in seconds], "commands": log}


def default_fold0(ensemble: dict[str, Any], bundle: str, args: argparse.Namespace, seeds: list[int]) -> list[dict]:
    """The default network's fold 0 per seed from ensemble.json, refused when measured with other settings."""
    settings = run_settings(args, bundle)
    runs = ensemble.get(bundle, {}).get("runs", {})
    missing = [s for s in seeds if str(s) not in runs]
    if missing:
        raise SystemExit(f"{bundle}: ensemble.json has no run of seed(s) {missing}; run benchmarks.ensemble first")
    for s in seeds:
        if runs[str(s)]["settings"] != settings:
            raise SystemExit(f"{bundle}: ensemble.json seed {s} was measured with {runs[str(s)]['settings']}")
    return [runs[str(s)]["single"]["per_fold"][0] for s in seeds]


def speed_child(bundle: str, default_model: str, alternatives: dict[str, str], args: argparse.Namespace) -> dict:
    """Inference seconds per test item and parameter counts, default vs alternatives (run in a child process)."""
    import torch

    from common.checkpoint import load_weights

    path = BRATS if bundle == "brats_segmentation" else CXR14
    in_process(path)
    dataset = Path(args.work_dir).resolve() / bundle / "dataset"
    over: dict[str, Any] = {"dataset_dir": str(dataset)}
    if bundle == "brats_segmentation":
        over["val_roi_size"] = args.val_roi_size
        over["engine"] = "torch"  # both networks timed in torch (the CPU default engine is OpenVINO)
    runners, params, plain = {}, {}, None
    for name, model in {"single": default_model, **alternatives}.items():
        override, extra = NETWORKS[bundle].get(name, (None, []))
        names = ("inference.json", "demo.json") + ((Path(override).name,) if override else ())
        settings = over | {flag.lstrip("-"): value for flag, value in zip(extra[::2], extra[1::2])}
        parser = bundle_parser(path, names, bundle_root=str(Path(model).parents[2]), **settings)
        network = load_weights(parser.get_parsed_content("network"), model).eval()
        inferer = parser.get_parsed_content("inferer")
        runners[name] = (lambda x, inferer=inferer, network=network: inferer(x, network), 1)
        params[name] = sum(p.numel() for p in network.parameters())
        plain = plain or parser
    preprocessing = plain.get_parsed_content("preprocessing")
    if bundle == "brats_segmentation":
        from scripts.prepare import load_split

        inputs = [preprocessing({"image": c["image"]})["image"][None] for c in load_split(dataset, "testing")]
        cost = time_modes(runners, inputs, args.repeats)
    else:
        from scripts.prepare import prepare_datalist

        images = [preprocessing({"image": i["image"]})["image"] for i in prepare_datalist(dataset)["test"]]
        size = plain.get_parsed_content("batch_size")
        inputs = [torch.stack(images[i : i + size]) for i in range(0, len(images), size)]
        cost = time_modes(runners, inputs, args.repeats, unit="image", digits=5)
    return {**cost, "parameters": params}


def main() -> None:
    p = build_parser(__doc__)
    p.set_defaults(out=str(ROOT / "benchmarks" / "results" / "networks.json"), bundles=sorted(NETWORKS))
    p.add_argument("--ensemble", default=str(ROOT / "benchmarks" / "results" / "ensemble.json"))
    p.add_argument("--speed_child", nargs=3, default=None, help=argparse.SUPPRESS)  # internal: bundle, default, alts
    args = p.parse_args()
    if args.speed_child:
        bundle, default_model, alternatives = args.speed_child
        write_json_atomic(speed_child(bundle, default_model, json.loads(alternatives), args), args.out, indent=2)
        return
    unknown = [b for b in args.bundles if b not in NETWORKS]
    if unknown:
        p.error(f"no alternative networks for {unknown}; choose from {sorted(NETWORKS)}")
    ensemble = json.loads(Path(args.ensemble).read_text())
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    for bundle in args.bundles:
        defaults = default_fold0(ensemble, bundle, args, args.seeds)
        entry: dict[str, Any] = {}
        trained: dict[str, str] = {}
        for name in NETWORKS[bundle]:
            print(f"== {bundle}: {name}", flush=True)
            runs = [fold0(args, bundle, name, s) for s in args.seeds]
            scores = [{k: v for k, v in r.items() if isinstance(v, float)} for r in runs]
            keys = [k for k in scores[0] if k in defaults[0]]
            diffs = [{k: a[k] - d[k] for k in keys} for a, d in zip(scores, defaults)]
            entry[name] = {
                "override": NETWORKS[bundle][name][0] or " ".join(NETWORKS[bundle][name][1]),
                "seeds": args.seeds,
                "alternative": across_seeds(scores),
                "default": across_seeds([{k: d[k] for k in keys} for d in defaults]),
                "difference": across_seeds(diffs),
                "training_seconds": [r["training_seconds"] for r in runs],
                "commands": [r["commands"] for r in runs],
            }
            work = Path(args.work_dir).resolve() / bundle / "networks" / name / f"seed{args.seeds[0]}"
            trained[name] = str(work / "models" / "fold0" / "model.pt")
        default_model = (
            Path(args.work_dir).resolve() / bundle / f"seed{args.seeds[0]}" / "models" / "fold0" / "model.pt"
        )
        speed_file = Path(args.work_dir).resolve() / bundle / "networks" / "speed.json"
        child = ["-m", "benchmarks.networks", "--speed_child", bundle, str(default_model), json.dumps(trained)]
        child += ["--work_dir", args.work_dir, "--repeats", str(args.repeats), "--out", str(speed_file)]
        run([sys.executable, *child], ROOT, benchmark_env(), [])
        speed = json.loads(speed_file.read_text())
        seconds = next(v for k, v in speed.items() if k.startswith("seconds_per_"))
        for name in NETWORKS[bundle]:
            entry[name]["speed"] = {
                "inference_multiplier": speed["multiplier"][name],
                "seconds_per_item": {"default": seconds["single"], name: seconds[name]},
                "parameters": {"default": speed["parameters"]["single"], name: speed["parameters"][name]},
            }
        first = ensemble[bundle]["runs"][str(args.seeds[0])]["protocol"]
        entry["protocol"] = (
            f"Fold 0 of benchmarks.ensemble's protocol, training seeds {args.seeds}, each alternative layered last "
            f"on configs/train.json + configs/demo.json (and on evaluate/inference); 'default' is the same seed's "
            f"fold 0 in ensemble.json, 'difference' alternative minus default per seed (mean, sample sd). Speed: "
            f"inferer seconds per preprocessed test item, fastest of {args.repeats} interleaved runs in one process, "
            f"seed {args.seeds[0]}'s weights. The ensemble benchmark's protocol: {first}"
        )
        entry["machine"] = machine_info(2)
        entry["command"] = "python -m benchmarks.networks " + " ".join(sys.argv[1:])
        result[bundle] = entry
        write_json_atomic(result, out, indent=2)
        for name in NETWORKS[bundle]:
            e = entry[name]
            figures = ", ".join(f"{k} {e['alternative'][k]:.3f} vs {e['default'][k]:.3f}" for k in HEADLINE[bundle])
            print(f"{bundle} {name}: {figures}; inference x{e['speed']['inference_multiplier']}", flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
