"""Import a published checkpoint into one of this collection's bundles.

    python tools/import_weights.py SOURCE CHECKPOINT OUTPUT [--variant NAME] [--unsafe_unpickle]

SOURCE: ``model_zoo_brats`` (MONAI model zoo brats_mri_segmentation ``models/model.pt``), ``model_zoo_luna16``
(lung_nodule_ct_detection ``models/model.pt``), ``xrv_densenet`` (a torchxrayvision DenseNet-121 file; its variant
is read from the published file name, or given with ``--variant nih|all|chex|...``).

The publisher's file is read as published (``tools/weights/publisher.py``; a pickled network only with
``--unsafe_unpickle``), its keys, outputs and labels are mapped onto the bundle's network built from the bundle's
``configs/inference.json`` + the source's override config (``tools/weights/sources.py``), and OUTPUT is written
atomically as ``{"model": state_dict, "info": {...}}``, the layout every bundle loads with ``weights_only=True``.
The command that runs it is printed. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/import_weights.py` without the editable install
    sys.path.insert(0, str(ROOT))

from common.checkpoint import atomic_save, load_checkpoint  # noqa: E402
from tools.weights.publisher import UNSAFE_FLAG, WeightsImportError, read_state_dict  # noqa: E402
from tools.weights.sources import BUNDLES, CONVERTERS, SOURCES, get_source  # noqa: E402


def import_weights(
    source_name: str,
    checkpoint: str | Path,
    output: str | Path,
    variant: str | None = None,
    unsafe_unpickle: bool = False,
) -> list[str]:
    """Write OUTPUT from the publisher's CHECKPOINT; returns the lines to show the user (notes, then commands)."""
    source = get_source(source_name)
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and output.resolve() == checkpoint.resolve():
        raise WeightsImportError(f"{output}: the output would replace the publisher's file; choose another path")
    state = read_state_dict(checkpoint, unsafe_unpickle=unsafe_unpickle)
    imported = CONVERTERS[source.name](source, state, checkpoint, variant)
    atomic_save({"model": imported.network.state_dict(), "info": imported.info}, output)
    load_checkpoint(output)  # what every bundle does: weights_only=True
    configs = f"'configs/inference.json','configs/{source.override}'"
    lines = [f"wrote {output} from {checkpoint}", *imported.notes, f"run it from {BUNDLES / source.bundle}:"]
    lines.append(f'  python -m monai.bundle run --config_file "[{configs}]" --ckpt_path {output.resolve()} ...')
    lines.append("score it with the official metrics (docs/README.md, Published weights: its training data):")
    lines.append(
        "  python -m monai.bundle run evaluating --config_file \"['configs/train.json','configs/evaluate.json',"
        f"'configs/{source.override}']\" --ckpt_path {output.resolve()} --dataset_dir ..."
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=sorted(SOURCES), help="which publication CHECKPOINT comes from")
    p.add_argument("checkpoint", help="the publisher's file, as downloaded")
    p.add_argument("output", help="the checkpoint to write for the bundle (e.g. bundles/<name>/models/model.pt)")
    p.add_argument("--variant", default=None, help="xrv_densenet: densenet121-res224-nih, -all, -chex, ... or nih, ...")
    p.add_argument(
        UNSAFE_FLAG,
        action="store_true",
        help="allow full unpickling of a whole pickled network (torchxrayvision's files); runs code from the file",
    )
    args = p.parse_args(argv)
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        lines = import_weights(args.source, args.checkpoint, args.output, args.variant, args.unsafe_unpickle)
    except WeightsImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
