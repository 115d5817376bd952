"""Fold ensembles and mirroring test-time augmentation (TTA), as one MONAI ``Inferer``.

``EnsembleInferer`` wraps the bundle's own inferer (``AutocastInferer(SlidingWindowInferer)``): for every network
and every mirror flip it flips the input volume, runs the wrapped inferer, flips the output back and takes the
sigmoid; the mean of these probabilities is the prediction (nnU-Net's fold ensemble with mirroring, REFERENCE.md
section 8). It returns the logit of that mean probability, so the unchanged postprocessing of ``inference.json``
and ``train.json`` (sigmoid, threshold 0.5) thresholds the mean probability, and the inferer is a drop-in
replacement for ``inferer`` / ``validate#inferer`` (``configs/inference_ensemble.json``,
``configs/evaluate_ensemble.json``).

Flips (``mirror_flips``): ``"all"`` is every subset of the 3 spatial axes, identity included (8 passes, as
nnU-Net); ``"axes"`` is the identity and each axis alone (4 passes). The flips act on the whole volume, before the
sliding window.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from monai.networks.utils import eval_mode
from monai.utils import convert_to_dst_type

from common.checkpoint import CheckpointError, load_weights
from common.flags import as_bool

FLIP_MODES = ("all", "axes")
FOLD_DIR = re.compile(r"^fold(\d+)$")


def mirror_flips(mode: str = "all", spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """The spatial axes flipped in each TTA pass, identity ``()`` first.

    ``"all"``: every subset of the axes (``2 ** spatial_dims`` passes); ``"axes"``: identity and each axis alone
    (``spatial_dims + 1`` passes). Axes count from the first spatial dimension (0 = x of a (B, C, x, y, z) batch).
    """
    axes = range(spatial_dims)
    if mode == "all":
        return [c for n in range(spatial_dims + 1) for c in itertools.combinations(axes, n)]
    if mode == "axes":
        return [(), *((a,) for a in axes)]
    raise ValueError(f"flips must be one of {FLIP_MODES}, got {mode!r}")


def find_checkpoints(models_dir: str | os.PathLike) -> list[str]:
    """Every ``models_dir/fold{k}/model.pt`` (sorted by k); without fold folders, ``models_dir/model.pt`` alone.

    Raises ``CheckpointError`` naming the folder when there is neither.
    """
    models_dir = Path(models_dir)
    folds = []
    if models_dir.is_dir():
        for sub in models_dir.iterdir():
            m = FOLD_DIR.match(sub.name)
            if m and (sub / "model.pt").is_file():
                folds.append((int(m.group(1)), str(sub / "model.pt")))
    if folds:
        return [path for _, path in sorted(folds)]
    if (models_dir / "model.pt").is_file():
        return [str(models_dir / "model.pt")]
    raise CheckpointError(
        f"{models_dir}: no fold*/model.pt and no model.pt; train folds (--fold k) or a single model first, "
        "or pass --ckpt_paths \"['a/model.pt', 'b/model.pt']\""
    )


def load_networks(
    network: torch.nn.Module,
    ckpt_paths: Sequence[str | os.PathLike],
    device: torch.device | str = "cpu",
    amp: Any = None,
) -> list[torch.nn.Module]:
    """One copy of ``network`` per checkpoint, weights loaded with ``common.checkpoint.load_weights``
    (weights-only, clear errors), placed on ``device`` by ``amp.prepare_network`` when given, in eval mode."""
    if isinstance(ckpt_paths, (str, os.PathLike)) or not ckpt_paths:
        raise CheckpointError(f"expected a non-empty list of checkpoint files, got {ckpt_paths!r}")
    networks = []
    for path in ckpt_paths:
        net = load_weights(copy.deepcopy(network), path, map_location=device)
        net = amp.prepare_network(net, device) if amp is not None else net.to(device)
        networks.append(net.eval())
    return networks


class EnsembleInferer(Inferer):
    """Mean sigmoid probability over ``networks`` x mirror flips, each pass run through ``inferer``.

    Args:
        inferer: the wrapped inferer, called as ``inferer(inputs, network)`` (e.g. the bundle's sliding window).
        networks: the ensemble's networks; ``None`` uses the network the engine passes (TTA of a single model).
        tta: mirror the input (``flips``) in every pass; ``False`` (or "false") runs each network once.
        flips: ``"all"`` (8 passes in 3D) or ``"axes"`` (4), see ``mirror_flips``.
        spatial_dims: number of trailing spatial dimensions of the (B, C, *spatial) input.
        eps: probabilities are clamped to [eps, 1 - eps] before the logit, so the output stays finite.

    Returns the logit of the mean probability (same shape and type as the wrapped inferer's output); apply a
    sigmoid to get the mean probability itself (``probabilities`` returns it directly).
    """

    def __init__(
        self,
        inferer: Callable[..., Any],
        networks: Sequence[torch.nn.Module] | None = None,
        tta: bool = True,
        flips: str = "all",
        spatial_dims: int = 3,
        eps: float = 1e-6,
    ) -> None:
        self.inferer = inferer
        self.networks = list(networks) if networks is not None else None
        if self.networks is not None and not self.networks:
            raise ValueError("networks is empty: give at least one network, or None for the engine's network")
        self.flips = mirror_flips(flips, spatial_dims) if as_bool(tta) else [()]
        self.spatial_dims = spatial_dims
        self.eps = eps

    def passes(self, n_networks: int = 1) -> int:
        """Network evaluations per volume (per sliding-window position): networks x flips."""
        return (len(self.networks) if self.networks is not None else n_networks) * len(self.flips)

    def probabilities(
        self, inputs: torch.Tensor, network: Callable[..., Any] | None = None, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The mean sigmoid probability over networks and flips."""
        networks = self.networks if self.networks is not None else [network]
        if networks[0] is None:
            raise ValueError("EnsembleInferer without networks needs the network to run")
        first = inputs.ndim - self.spatial_dims
        total: torch.Tensor | None = None
        modules = [n for n in networks if isinstance(n, torch.nn.Module)]
        with eval_mode(*modules):
            for net in networks:
                for axes in self.flips:
                    dims = [first + a for a in axes]
                    x = torch.flip(inputs, dims) if dims else inputs
                    out = self.inferer(x, net, *args, **kwargs)
                    out = torch.flip(out, dims) if dims else out
                    prob = torch.sigmoid(out.float())
                    total = prob if total is None else total + prob
        assert total is not None
        return total / (len(networks) * len(self.flips))

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., Any] | None = None, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        mean = self.probabilities(inputs, network, *args, **kwargs)
        # as MONAI's sliding window: the output takes the input's type and metadata (MetaTensor)
        return convert_to_dst_type(torch.logit(mean, eps=self.eps), inputs, dtype=mean.dtype)[0]

    def describe(self) -> str:
        """One line for the run's log: models, flips, passes."""
        n = len(self.networks) if self.networks is not None else 1
        tta = f"{len(self.flips)} mirror flips" if len(self.flips) > 1 else "no TTA"
        return f"{n} model(s) x {tta} = {self.passes()} passes per volume"
