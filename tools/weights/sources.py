"""The publications ``tools/import_weights.py`` imports, the bundle and override config that run each, and how
their weights map onto the bundle's network.

- ``model_zoo_brats`` / ``model_zoo_luna16``: the MONAI model zoo's ``brats_mri_segmentation`` (v0.5.2) and
  ``lung_nodule_ct_detection`` (v0.6.8) ``models/model.pt``. Their networks are the MONAI classes our bundles use,
  built by ``configs/inference.json`` + ``configs/weights_model_zoo.json`` with the model zoo's arguments, so the keys
  map one to one; the channel order (T1c, T1, T2, FLAIR), the output order (TC, WT, ET) and the anchors are the
  model zoo's already. What differs is the pipeline around the network, which the override config sets.
- ``xrv_densenet``: torchxrayvision's DenseNet-121 files (``densenet121-res224-nih``, ``-all``, ``-chex`` and the
  other 224 px DenseNets). The torchvision layer names become MONAI's (the CXR bundle's own
  ``torchvision_to_monai_keys``), and of the 18 outputs only those that are this bundle's labels are kept, by name,
  in this bundle's label order (xrv's NIH order is another). Label names and operating points come from
  torchxrayvision's own table (``torchxrayvision.models.model_urls``) for the variant.

The bundle's network is always built from the bundle's config files, so the written checkpoint fits exactly what
``python -m monai.bundle run --config_file "['configs/inference.json','configs/<override>']"`` builds.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tools.weights.publisher import WeightsImportError, check_keys

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"


@dataclass(frozen=True)
class Source:
    """One publication: where it runs here and how to recognise it."""

    name: str
    bundle: str  # folder under bundles/
    override: str  # configs/<override>, layered on the bundle's inference.json (and train.json + evaluate.json)
    what: str  # the expected file content, for error messages
    signature: str  # a key only this publisher's network has: names the right source when a file is given to another
    trained_on: str  # the publisher's training data: scores on data that overlaps it are not test scores
    published_md5: Mapping[str, str] = field(default_factory=dict)  # md5 of the publisher's file -> release


SOURCES = {
    s.name: s
    for s in (
        Source(
            "model_zoo_brats",
            "brats_segmentation",
            "weights_model_zoo.json",
            "the MONAI model zoo's brats_mri_segmentation weights (SegResNet, init_filters 16, blocks_down "
            "[1,2,2,4], 4 input channels T1c/T1/T2/FLAIR, 3 outputs TC/WT/ET)",
            "convInit.conv.weight",
            "200 of the 285 BraTS 2018 training cases (model-zoo split 200/42/43, seed 123); the 2019-2021 training "
            "releases contain those cases, so a split of them overlaps its training data",
            # models/model.pt in the model zoo's models/brats_mri_segmentation/large_files.yml
            {"870e677b782a5184cbc48db1456b78e8": "brats_mri_segmentation v0.5.2"},
        ),
        Source(
            "model_zoo_luna16",
            "luna16_detection",
            "weights_model_zoo.json",
            "the MONAI model zoo's lung_nodule_ct_detection weights (RetinaNet on a 3D ResNet-50 FPN, 3 anchors, "
            "1 class)",
            "feature_extractor.body.conv1.weight",
            "LUNA16 fold 0 of the model zoo's 10-fold datalist (training on the other nine folds): only the scans of "
            "its validation fold are unseen",
            # models/model.pt in the model zoo's models/lung_nodule_ct_detection/large_files.yml
            {"b2e732a7c2786e2f8398fa45293b1e73": "lung_nodule_ct_detection v0.6.8"},
        ),
        Source(
            "xrv_densenet",
            "cxr14_classification",
            "weights_xrv.json",
            "a torchxrayvision DenseNet-121 (1 input channel, 18 outputs, torchvision layer names)",
            "features.denseblock1.denselayer1.norm1.weight",
            "torchxrayvision's own random split of each dataset (the NIH variant: random split of ChestX-ray14, "
            "torchxrayvision issue #47), so NIH's official test list overlaps its training images",
        ),
    )
}


@dataclass
class Imported:
    """A publisher's weights inside the bundle's network, what to store beside them, and what to tell the user."""

    network: torch.nn.Module
    info: dict[str, Any]
    notes: list[str]


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise WeightsImportError(f"unknown source {name!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def md5(path: Path) -> str:
    digest = hashlib.md5()  # the model zoo publishes md5 sums (large_files.yml)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def activate_bundle(source: Source) -> Path:
    """Put the bundle's folder on ``sys.path`` (its configs import its own ``scripts`` package)."""
    bundle = BUNDLES / source.bundle
    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    import scripts

    if not str(Path(scripts.__file__).resolve()).startswith(str(bundle.resolve())):
        raise RuntimeError(f"another bundle's 'scripts' package is already imported ({scripts.__file__})")
    return bundle


def bundle_network(source: Source, updates: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """``network_def`` of the bundle's inference.json + the source's override config (+ ``updates``)."""
    from monai.bundle import ConfigParser

    bundle = activate_bundle(source)
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "configs" / source.override)])
    parser.update({"bundle_root": str(bundle), **(updates or {})})
    parser.get_parsed_content("imports")
    return parser.get_parsed_content("network_def", instantiate=True)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _check(source: Source, state: Mapping[str, torch.Tensor], path: Path, expected: Mapping, **kw: Any) -> None:
    """``check_keys``, and when the file fits another source, say which."""
    try:
        check_keys(state, expected, path, source.what, **kw)
    except WeightsImportError as e:
        others = [s.name for s in SOURCES.values() if s is not source and s.signature in state]
        hint = f" It looks like a file for {others[0]}: tools/import_weights.py {others[0]} ..." if others else ""
        raise WeightsImportError(f"{e}.{hint}") from None


def _load(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, source: Source) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:  # the checks above should make this unreachable; a config change could not
        raise WeightsImportError(
            f"{path}: the mapped weights do not fit bundles/{source.bundle} with configs/{source.override}: {e}"
        ) from e


def from_model_zoo(source: Source, state: dict[str, torch.Tensor], path: Path, variant: str | None = None) -> Imported:
    """The model zoo's state dict into the bundle's network: same MONAI class and arguments, same keys."""
    if variant is not None:
        raise WeightsImportError(f"--variant applies to xrv_densenet only, not to {source.name}")
    network = bundle_network(source)
    _check(source, state, path, _shapes(network.state_dict()))
    _load(network, state, path, source)
    digest = md5(path)
    release = source.published_md5.get(digest)
    provenance = f"the published file of {release}" if release else "not a published release file (retrained?)"
    notes = [f"md5 {digest}: {provenance}"]
    info = {"bundle": source.bundle, "source": source.name, "file": path.name, "md5": digest, "release": release}
    return Imported(network, info, notes)


def xrv_variant(path: Path, variant: str | None) -> str:
    """The torchxrayvision weights name (``densenet121-res224-nih`` ...): from ``variant`` (short names such as
    ``nih`` accepted) or from the published file name, which must agree when both are there."""
    try:
        from torchxrayvision.models import model_urls
    except ImportError as e:
        raise WeightsImportError(
            f"xrv_densenet needs the torchxrayvision package (its label table and network definition): {e}; "
            "pip install -r requirements.txt"
        ) from e
    prefix = "densenet121-res224-"
    names = sorted(k for k in model_urls if k.startswith(prefix))
    by_file = {Path(model_urls[k]["weights_url"]).name: k for k in names}
    from_file = by_file.get(path.name)
    if variant is None:
        if from_file is None:
            raise WeightsImportError(
                f"{path}: not one of torchxrayvision's published file names, so its output labels are unknown; "
                f"pass --variant with one of {', '.join(names)} (or the short names: nih, all, chex, ...)"
            )
        return from_file
    key = variant if variant.startswith(prefix) else prefix + variant
    if key not in names:
        raise WeightsImportError(f"unknown torchxrayvision variant {variant!r}; expected one of {', '.join(names)}")
    if from_file is not None and from_file != key:
        raise WeightsImportError(
            f"{path}: this is torchxrayvision's published {from_file} file, but --variant says {key}; the labels "
            "of its outputs would be wrong"
        )
    return key


def from_xrv(source: Source, state: dict[str, torch.Tensor], path: Path, variant: str | None = None) -> Imported:
    """A torchxrayvision DenseNet-121 into the CXR bundle's MONAI DenseNet-121, outputs in this bundle's label order."""
    key = xrv_variant(path, variant)
    import torchxrayvision as xrv

    activate_bundle(source)
    from scripts.labels import LABELS
    from scripts.networks import torchvision_to_monai_keys

    state = dict(state)
    file_thresholds = state.pop("op_threshs", None)  # present when saved from a network with weights loaded
    publisher = xrv.models.DenseNet(weights=None)  # xrv's own definition: 18 outputs, 1 channel
    _check(source, state, path, _shapes(publisher.state_dict()))

    table = xrv.models.model_urls[key]
    names = list(table["labels"])  # 18 entries, '' where the variant's output is untrained
    thresholds = file_thresholds if file_thresholds is not None else torch.tensor(table["op_threshs"])
    index = {name: i for i, name in enumerate(names) if name}
    kept = [label for label in LABELS if label in index]
    if not kept:
        raise WeightsImportError(f"{path}: {key} predicts none of this bundle's labels ({', '.join(LABELS)})")
    rows = torch.tensor([index[label] for label in kept])
    kept_thresholds = [float(t) for t in thresholds.float()[rows]]
    if not all(0.0 < t < 1.0 for t in kept_thresholds):  # NaN marks an untrained output in xrv's table
        raise WeightsImportError(f"{path}: {key} has no operating point for some kept labels: {kept_thresholds}")

    mapped = torchvision_to_monai_keys(state)
    mapped["class_layers.out.weight"] = mapped["class_layers.out.weight"][rows]
    mapped["class_layers.out.bias"] = mapped["class_layers.out.bias"][rows]
    network = bundle_network(source, {"label_names": kept})
    _load(network, mapped, path, source)

    dropped = [name for name in names if name and name not in LABELS]
    missing = [label for label in LABELS if label not in index]
    notes = [f"{key}: {len(kept)} outputs kept, in this bundle's label order: {', '.join(kept)}"]
    if dropped:
        notes.append(f"outputs dropped (not NIH ChestX-ray14 labels): {', '.join(dropped)}")
    if missing:
        notes.append(f"labels this model does not predict (absent from its outputs): {', '.join(missing)}")
    info = {
        "bundle": source.bundle,
        "source": source.name,
        "variant": key,
        "file": path.name,
        "md5": md5(path),
        "labels": kept,
        "op_threshs": kept_thresholds,
        "publisher_labels": names,
    }
    return Imported(network, info, notes)


CONVERTERS = {"model_zoo_brats": from_model_zoo, "model_zoo_luna16": from_model_zoo, "xrv_densenet": from_xrv}
