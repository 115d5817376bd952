"""Plumbing shared by tests across the repository (imported as ``tests.helpers``; the repository root is on
``sys.path`` through ``conftest.py``).

``randomize_weights`` and ``calibrate_batch_norm`` give a publisher's network seeded weights with outputs in a
useful range, for the weight-import exactness tests.

``HANG_GUARD`` is the one timeout for every subprocess a default-suite test starts. It only stops a hung child
(a deadlock would otherwise hold CI until its 90-minute limit); it is not a speed check, so it is set far above
what any run takes on a busy 2-core machine: a test must never fail because the machine was slow.

``bundle_workflow`` builds a bundle's ``ConfigWorkflow`` as ``monai.bundle run`` does; ``inference_workflow`` is its
``run`` of ``inference.json`` (plus overlays) over one input folder or file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

HANG_GUARD = 1800  # seconds


def randomize_weights(network: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Seeded noise on every parameter and float buffer, so that no channel, label or layer equals another.

    A freshly built network has every norm scale 1 and shift 0 and zero biases: an import that swapped two norm
    layers, two output rows or two input channels could still give the same outputs. Here each tensor gets noise of
    ``scale`` times its own spread (``scale`` where it is constant); running variances are scaled by 0.5-1.5 so they
    stay positive. Integer buffers (batch counters) are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*network.named_parameters(), *network.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.mul_(0.5 + torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            spread = float(tensor.std()) if tensor.numel() > 1 else 0.0
            tensor.add_(noise * scale * (spread if spread > 0 else 1.0))
    return network


def calibrate_batch_norm(network: torch.nn.Module, inputs: Iterable[torch.Tensor]) -> torch.nn.Module:
    """Batch-norm running statistics measured on ``inputs`` (what training leaves behind), then eval mode.

    With arbitrary running statistics a deep network's activations grow layer by layer and its outputs saturate
    (probabilities exactly 0 or 1, every anchor scoring 1): a comparison at 1e-5 would then pass even with a wrong
    resize or intensity window. Measured statistics keep the outputs in the range trained weights give.
    """
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over all inputs
    network.train()
    with torch.no_grad():
        for x in inputs:
            network(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return network.eval()


def bundle_workflow(bundle: Path, config_files: Sequence[str | Path], workflow_type: str, run_id: str, **override: Any):
    """An initialized MONAI ``ConfigWorkflow`` of ``bundle`` as ``monai.bundle run`` builds it: ``config_files``
    (names inside ``bundle/configs`` or paths) layered in order, the bundle's metadata and logging.conf, and the
    ``override`` ids (``--<id> value`` on the command line)."""
    from monai.bundle import ConfigWorkflow

    configs = Path(bundle) / "configs"
    wf = ConfigWorkflow(
        config_file=[str(configs / f) for f in config_files],  # an absolute path stays as it is
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        **override,
    )
    wf.initialize()
    return wf


def inference_workflow(
    bundle: Path,
    config_files: Sequence[str | Path],
    dataset_dir: str | Path,
    output_dir: str | Path,
    bundle_root: str | Path | None = None,
    **override: Any,
):
    """``bundle_workflow`` of the ``run`` id of ``config_files`` (``inference.json`` first, overlays such as a
    ``weights_*.json`` after it): predicts ``dataset_dir`` (a folder or one study) into ``output_dir``.
    ``bundle_root`` is the bundle itself unless given; ``override`` as in ``bundle_workflow`` (e.g. ``ckpt_path``).
    Initialized, not run: a test may still change the parsed network before ``run()``."""
    return bundle_workflow(
        bundle,
        config_files,
        "inference",
        "run",
        bundle_root=str(bundle if bundle_root is None else bundle_root),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        **override,
    )
