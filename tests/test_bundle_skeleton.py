"""The three bundles share one skeleton: the same run ids, the same multi-process lifecycle and device rule.

A maintainer who knows one bundle knows the others; these tests keep it that way (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir())
DETERMINISM = "$monai.utils.set_determinism(seed=@seed)"
# the cause of a failure as the last line printed; no outputs in a folder that is not a bundle (common/errors.py)
ERRORS = ["$common.errors.install()", "$common.errors.check_bundle_root(@bundle_root)"]


def _json(bundle: Path, name: str) -> dict:
    return json.loads((bundle / "configs" / name).read_text())


# Every configs/*.json is a base config or a file layered on one (``--config_file "['configs/<base>', ...]"``); the
# rest are no ``monai.bundle run`` configs: metadata.json (``--meta_file``) and demo_spec.json (tools/demo.py's data).
LAYERED = {
    "train.json": ["evaluate.json", "multi_gpu_train.json", "demo.json", "evaluate_*.json", "network_*.json",
                   "weights_*.json"],
    "inference.json": ["demo.json", "inference_*.json", "localisation.json", "network_*.json", "weights_*.json"],
}  # fmt: skip
NOT_RUN_CONFIGS = {"metadata.json", "demo_spec.json"}


def _layered(bundle: Path, base: str) -> list[Path]:
    """The config files layered on ``base`` in ``bundle``, sorted by name."""
    configs = bundle / "configs"
    return sorted({f for pattern in LAYERED[base] for f in configs.glob(pattern)})


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_every_config_file_is_a_base_or_layered_on_one(bundle: Path) -> None:
    """So that the checkpoint and import checks below, which walk LAYERED, see every config a user can run."""
    known = {*LAYERED, *NOT_RUN_CONFIGS, *(f.name for base in LAYERED for f in _layered(bundle, base))}
    assert {f.name for f in (bundle / "configs").glob("*.json")} <= known


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_run_ids(bundle: Path) -> None:
    """``training`` in train.json, ``evaluating`` in evaluate.json, ``run`` in inference.json; seeding in
    ``initialize``, so that every run id layered on train.json is seeded the same way."""
    train, evaluate, infer = (_json(bundle, n) for n in ("train.json", "evaluate.json", "inference.json"))
    assert train["initialize"] == [*ERRORS, DETERMINISM]
    assert infer["initialize"] == [*ERRORS, "$monai.utils.set_determinism(seed=0)"]
    assert _json(bundle, "multi_gpu_train.json")["initialize"][:2] == ERRORS
    assert "training" in train and "run" not in train and "evaluating" not in train
    assert "evaluating" in evaluate and "run" not in evaluate and "training" not in evaluate
    assert "run" in infer and "training" not in infer and "evaluating" not in infer
    assert not any(DETERMINISM in item for item in train["training"] + evaluate["evaluating"])


def _without_network(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "network"}


def test_multi_gpu_train_is_the_same_everywhere() -> None:
    """One multi_gpu_train.json lifecycle (initialize / training / finalize, samplers, rank-0 handlers); only the
    DDP wrapper's options may differ (the detector has parameters unused in some steps)."""
    configs = {b.name: _json(b, "multi_gpu_train.json") for b in BUNDLES}
    first, *others = configs.values()
    for name, config in configs.items():
        assert _without_network(config) == _without_network(first), name
        network = {
            k: v for k, v in config["network"].items() if k not in ("broadcast_buffers", "find_unused_parameters")
        }
        assert network == {k: v for k, v in first["network"].items() if k in network}, name
    assert set(first) >= {"device", "initialize", "training", "finalize"}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_logging_handlers_are_last(bundle: Path) -> None:
    """multi_gpu_train.json keeps ``train#handlers[: -2]`` on ranks > 0: the last two must be the logging ones."""
    handlers = _json(bundle, "train.json")["train"]["handlers"]
    assert [h["_target_"] for h in handlers[-2:]] == ["StatsHandler", "TensorBoardStatsHandler"]


@pytest.fixture
def rank1_of_2_on_a_second_node(monkeypatch: pytest.MonkeyPatch):
    """A process group where this process is global rank 1 of 2 with LOCAL_RANK 0 (the only process of the
    second node), and CUDA reported available: a device chosen from the global rank would be ``cuda:1``."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=2)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_multi_gpu_device_follows_local_rank(bundle: Path, rank1_of_2_on_a_second_node, monkeypatch) -> None:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in ("train.json", "multi_gpu_train.json")])
    assert dist.get_rank() == 1
    assert parser.get_parsed_content("device") == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    parser.read_config([str(bundle / "configs" / n) for n in ("train.json", "multi_gpu_train.json")])
    assert parser.get_parsed_content("device") == torch.device("cuda:1")


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_single_process_device_rule(bundle: Path) -> None:
    """train/inference pick CUDA when there is one, else the CPU, with the same expression in every bundle."""
    expected = "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')"
    assert _json(bundle, "train.json")["device"] == expected
    assert _json(bundle, "inference.json")["device"] == expected


LOAD_WEIGHTS = "$common.checkpoint.load_weights(@network, @ckpt_path, map_location=@device)"


def _targets(handlers: list) -> list[str]:
    return [h.get("_target_") for h in handlers if isinstance(h, dict)]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_checkpoint_convention(bundle: Path) -> None:
    """models/checkpoint_epoch=N.pt (full state, --resume) from EpochCheckpoints; models/model.pt (best validation
    weights + CheckpointInfo) from the validator's CheckpointSaver; evaluate and inference load model.pt through
    common.checkpoint.load_weights (weights_only), never through a loader handler. A bundle whose ckpt_dir depends on
    a cross-validation ``fold`` id keeps models/ for the default run and writes fold k to models/fold{k}/."""
    train, evaluate, infer = (_json(bundle, n) for n in ("train.json", "evaluate.json", "inference.json"))
    epoch = [h for h in train["train"]["handlers"] if h.get("_target_") == "common.checkpoint.EpochCheckpoints"]
    assert len(epoch) == 1 and epoch[0]["resume"] == "@resume" and epoch[0]["ckpt_dir"] == "@ckpt_dir"
    assert set(epoch[0]["save_dict"]) == {"model", "optimizer", "lr_scheduler"}
    savers = [h for h in train["validate"]["handlers"] if h.get("_target_") == "CheckpointSaver"]
    assert len(savers) == 1 and savers[0]["key_metric_filename"] == "model.pt" and savers[0]["save_key_metric"]
    assert savers[0]["save_dict"] == {"model": "@network", "info": "@checkpoint_info"}
    assert train["checkpoint_info"] == {"_target_": "common.checkpoint.CheckpointInfo", "bundle": bundle.name}
    assert train["resume"] is False
    folds = "@fold" in train["ckpt_dir"]  # cross-validation folds are opt-in: the default run keeps models/
    for fold in [None, *([0, 3] if folds else [])]:
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.json"))
        parser.update({"bundle_root": "/root", **({"fold": fold} if fold is not None else {})})
        assert parser.get_parsed_content("ckpt_dir") == "/root/models" + ("" if fold is None else f"/fold{fold}")
    assert evaluate["ckpt_path"] == "$@ckpt_dir + '/model.pt'" and LOAD_WEIGHTS in evaluate["evaluating"]
    assert infer["ckpt_path"] == "$@bundle_root + '/models/model.pt'"
    assert infer["run"].index(LOAD_WEIGHTS) < next(i for i, x in enumerate(infer["run"]) if "evaluator.run()" in x)


RUN_IDS = ("training", "evaluating", "run", "localising")
ENSEMBLE_LOADERS = {
    "common.ensemble.load_networks": {"network": "@network_def", "ckpt_paths": "@ckpt_paths"},
    "common.ensemble.load_fold_networks": {"network": "@network_def", "models_dir": "@models_dir"},
}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_every_config_loads_checkpoints_one_way(bundle: Path) -> None:
    """Every configs/*.json (ensembles, localisation, network and weights overrides too) loads weights only through
    ``common.checkpoint.load_weights`` (one model: ``ckpt_path``, defined by evaluate.json and inference.json
    alone) or ``common.ensemble`` (fold ensembles: the ``models/fold{k}/model.pt`` files under
    ``models_dir = bundle_root/models``, found by ``find_checkpoints``), before any ``.run()`` of its run id; never
    through a loader handler, ``torch.load`` or ``load_state_dict``."""
    loaders = set()
    for file in sorted((bundle / "configs").glob("*.json")):
        text, config = file.read_text(), json.loads(file.read_text())
        for banned in ("CheckpointLoader", "torch.load", "load_state_dict"):
            assert banned not in text, f"{file.name}: {banned}"
        assert ("ckpt_path" in config) == (file.name in ("evaluate.json", "inference.json")), file.name
        for run_id in RUN_IDS:
            steps = config.get(run_id, [])
            loads = [i for i, step in enumerate(steps) if "load_weights" in step]
            assert all(steps[i] == LOAD_WEIGHTS for i in loads), f"{file.name}: {run_id}"
            if loads:
                runs = [i for i, step in enumerate(steps) if ".run()" in step]
                assert len(loads) == 1 and runs and loads[0] < runs[0], f"{file.name}: {run_id}"
                loaders.add(file.name)
        for target, arguments in ENSEMBLE_LOADERS.items():
            for component in _components(config, target):
                assert arguments.items() <= component.items(), f"{file.name}: {component}"
                loaders.add(file.name)
        if "models_dir" in config:
            assert config["models_dir"] == "$@bundle_root + '/models'", file.name
            assert [c["models_dir"] for c in _components(config, "common.ensemble.find_checkpoints")] == [
                "@models_dir"
            ], file.name
    ensembles = {f.name for f in (bundle / "configs").glob("*_ensemble.json")}
    assert {"evaluate.json", "inference.json", "evaluate_ensemble.json", "inference_ensemble.json"} <= loaders
    assert loaders - {"evaluate.json", "inference.json"} - ensembles <= {"localisation.json"}


EXPR_MODULE = re.compile(r"(?<![\w.@#])((?:common|scripts)(?:\.[a-z_]+)+|os|glob)\b(?=\.)")


def _modules_used(configs: list[dict]) -> set[str]:
    """Modules that ``$`` expressions use (``scripts.prepare.load_split(...)`` uses ``scripts.prepare``)."""
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, str) and value.startswith("$") and not value.startswith("$import"):
            found.update(EXPR_MODULE.findall(value))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for config in configs:
        walk(config)
    return found


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_one_import_idiom(bundle: Path) -> None:
    """``imports`` lists ``$import <module>`` for exactly the modules the expressions use, with their top-level
    package (MONAI binds ``$import a.b`` to the name ``a.b`` only); ``_target_`` paths need none. train.json and
    inference.json import for every file layered on them (LAYERED: evaluate, multi_gpu_train, demo, ensembles,
    localisation, network and published-weights overrides), whose own ``imports`` would replace theirs."""
    for base in LAYERED:
        files = [bundle / "configs" / base, *_layered(bundle, base)]
        data = [json.loads(f.read_text()) for f in files]
        modules = _modules_used(data)
        modules |= {m.split(".")[0] for m in modules}
        assert data[0]["imports"] == [f"$import {m}" for m in sorted(modules)], base
        assert all("imports" not in d for d in data[1:]), base


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_training_needs_no_dataset_folder_when_given_datalists(bundle: Path, tmp_path: Path) -> None:
    """MONAI Label trains a bundle with its own datalists (it overrides ``train#dataset#data`` and
    ``validate#dataset#data``) and never sets ``dataset_dir``: nothing that ``training`` builds or prints may read
    the dataset folder (the BraTS training banner once did, and every MONAI Label training request failed)."""
    from conftest import activate_bundle

    activate_bundle(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(bundle),
            "output_dir": str(tmp_path),
            "dataset_dir": str(tmp_path / "no_such_dataset"),
            "train#dataset#data": [],
            "validate#dataset#data": [],
        }
    )
    parser.get_parsed_content("imports")
    training = parser["training"]
    for i in range(len(training) - 1):  # the banner and anything else before the final trainer.run()
        parser.get_parsed_content(f"training#{i}")
    # the trainer is not built (its loaders refuse an empty datalist): every id it needs, directly or through
    # others, is listed instead, and the dataset folder must not be among them
    needed, todo = set(), ["training"]
    while todo:
        current = todo.pop()
        for ref in ReferenceResolver.find_refs_in_config(parser.get(current), current):
            ref = ReferenceResolver.normalize_id(ref)
            if ref not in needed:
                needed.add(ref)
                todo.append(ref)
    assert "train::trainer" in needed and "validate::evaluator" in needed
    assert not {"dataset_dir", "datalist", "train_datalist", "val_datalist"} & needed, sorted(needed)
    assert not (tmp_path / "no_such_dataset").exists()


def _augmentations(transform) -> list:
    """The random transforms (not crops: a crop is sampling, not augmentation) inside a parsed transform chain."""
    from monai.transforms import Compose, RandomizableTransform

    found = []
    for t in transform.transforms if isinstance(transform, Compose) else [transform]:
        if isinstance(t, Compose):
            found += _augmentations(t)
        elif isinstance(t, RandomizableTransform) and "Crop" not in type(t).__name__:
            found.append(t)
    return found


@pytest.mark.parametrize("config", ["train.json", "demo.json"])
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_training_augments(bundle: Path, config: str) -> None:
    """Augmentation silently off (a list emptied, every probability 0) leaves training running and the synthetic
    benchmark barely moved, so it is guarded here: the training transforms of the recipe and of the demo contain
    random augmentations that fire (probability > 0), and validation contains none."""
    from conftest import activate_bundle

    activate_bundle(bundle)
    parser = ConfigParser()
    files = ["train.json"] + ([config] if config != "train.json" else [])
    parser.read_config([str(bundle / "configs" / f) for f in files])
    parser.update({"bundle_root": str(bundle)})
    parser.get_parsed_content("imports")
    train = _augmentations(parser.get_parsed_content("train#preprocessing", instantiate=True))
    firing = sorted(type(t).__name__ for t in train if t.prob > 0)
    assert len(firing) >= 1, f"{bundle.name} {config}: no random augmentation with probability > 0"
    assert not _augmentations(parser.get_parsed_content("validate#preprocessing", instantiate=True))


WORKERS = "$common.flags.dataloader_workers()"


def _components(value, target: str) -> list[dict]:
    """Every component of a config whose ``_target_`` ends with ``target`` (``DataLoader``: also
    ``ThreadDataLoader``)."""
    if isinstance(value, dict):
        own = [value] if str(value.get("_target_", "")).endswith(target) else []
        return own + [d for v in value.values() for d in _components(v, target)]
    if isinstance(value, list):
        return [d for v in value for d in _components(v, target)]
    return []


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_cache_progress_only_on_a_terminal(bundle: Path) -> None:
    """MONAI's ``CacheDataset`` draws a tqdm bar by default, carriage returns and all, into CI and server logs too:
    every one of them asks ``common.progress.show_progress()`` (CXR14's evaluate.json test set once did not)."""
    for file in (bundle / "configs").glob("*.json"):
        caches = _components(_json(bundle, file.name), "CacheDataset")
        assert all(c.get("progress") == "$common.progress.show_progress()" for c in caches), file.name


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_dataloader_workers_follow_the_cpus_of_the_process(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training and inference take their DataLoader workers from one expression, the CPUs this process may use
    (at most 4): inference once had a fixed 2 (CXR14, LUNA16) or 0 (BraTS), training ``min(4, os.cpu_count())``,
    which counts the whole machine, not the 2 cores a container or ``taskset`` gives the run."""
    from conftest import activate_bundle

    activate_bundle(bundle)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)  # one CPU for this process
    monkeypatch.setattr("os.cpu_count", lambda: 64)  # of a large machine
    for file in (bundle / "configs").glob("*.json"):  # every loader of every config, layered or not
        assert {str(d.get("num_workers")) for d in _components(_json(bundle, file.name), "DataLoader")} <= {
            "@num_workers"
        }, file.name
    for name in ("train.json", "inference.json"):
        config = _json(bundle, name)
        assert config["num_workers"] == WORKERS, name
        assert _components(config, "DataLoader"), name
        parser = ConfigParser(config)
        parser.get_parsed_content("imports")
        assert parser.get_parsed_content("num_workers") == 1, name


def _network_shapes(bundle: Path, files: list[str]) -> dict[str, tuple[int, ...]]:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f) for f in files])
    parser.update({"bundle_root": str(bundle)})
    parser.get_parsed_content("imports")
    net = parser.get_parsed_content("network_def", instantiate=True)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_demo_overrides_fit_every_command(bundle: Path) -> None:
    """One file, ``configs/demo.json``, makes every documented command take the demo's weights: layered on
    train.json, evaluate.json, multi_gpu_train.json and inference.json it only sets ids those configs have (or
    new top-level ids), and it builds the same network for training as for inference, so a demo checkpoint loads
    into the inference/export commands with no other flag (a nested id like ``lr_scheduler#patience`` once made
    ``inference.json`` + ``demo.json`` fail, and BraTS inference needed ``--init_filters 8``)."""
    from conftest import activate_bundle

    activate_bundle(bundle)
    demo = _json(bundle, "demo.json")
    for files in (["train.json"], ["train.json", "evaluate.json"], ["train.json", "multi_gpu_train.json"],
                  ["inference.json"]):  # fmt: skip
        merged: dict = {}
        for f in files:
            merged.update(_json(bundle, f))
        for key in demo:
            parent: object = merged
            for part in key.split("#")[:-1]:
                assert isinstance(parent, dict) and part in parent, f"{bundle.name}: demo.json's {key!r} on {files}"
                parent = parent[part]
    trained = _network_shapes(bundle, ["train.json", "demo.json"])
    assert trained == _network_shapes(bundle, ["inference.json", "demo.json"])
    assert trained != _network_shapes(bundle, ["inference.json"])  # the demo network really is another size
