"""Fold ensembles and mirroring test-time augmentation (TTA), as MONAI ``Inferer``s, for any bundle.

``EnsembleInferer`` wraps the bundle's own inferer (BraTS: ``AutocastInferer(SlidingWindowInferer)``; CXR14:
``AutocastInferer(SimpleInferer)``): for every network and every flip it flips the input, runs the wrapped
inferer, flips a dense output (segmentation) back and takes the sigmoid; the mean of these probabilities is the
prediction (nnU-Net's fold ensemble with mirroring, REFERENCE.md section 8). It returns either the logit of that
mean (``output="logit"``: the bundle's unchanged postprocessing, sigmoid then threshold, applies to it) or the
mean probability itself (``output="probability"``: the ensemble configs then drop the sigmoid from the
postprocessing, so one model without TTA gives exactly the plain model's probabilities).

Flips: ``"all"`` is every subset of the spatial axes, identity included (8 passes in 3D, as nnU-Net); ``"axes"``
the identity and each axis alone (4 in 3D); or an explicit list of passes, each a list of spatial axes (``[]`` is
the identity), e.g. ``[[], [1]]`` for the identity and a left-right flip of a (B, C, rows, cols) image. The flips
act on the whole input, before any sliding window.

``OutOfFoldInferer`` runs each item through the fold model that did not train on it (each batch item carries its
fold number): out-of-fold predictions of a cross-validation, for choosing thresholds without a held-out set.

``find_checkpoints`` / ``fold_checkpoints`` / ``load_networks`` / ``load_fold_networks`` find and load the
``models/fold{k}/model.pt`` files of ``--fold k`` trainings (``common.checkpoint.load_weights``: weights-only).
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from monai.networks.utils import eval_mode
from monai.utils import convert_to_dst_type

from common.checkpoint import CheckpointError, load_weights
from common.flags import as_bool

FLIP_MODES = ("all", "axes")
OUTPUTS = ("logit", "probability")
FOLD_DIR = re.compile(r"^fold(\d+)$")


def mirror_flips(mode: str | Sequence[Sequence[int]] = "all", spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """The spatial axes flipped in each TTA pass.

    ``"all"``: every subset of the axes (``2 ** spatial_dims`` passes); ``"axes"``: identity and each axis alone
    (``spatial_dims + 1`` passes), identity ``()`` first in both. A list of passes is taken as given (each a list of
    distinct spatial axes in ``0 .. spatial_dims - 1``). Axes count from the first spatial dimension (0 = x of a
    (B, C, x, y, z) batch, 1 = cols of a (B, C, rows, cols) batch).
    """
    axes = range(spatial_dims)
    if mode == "all":
        return [c for n in range(spatial_dims + 1) for c in itertools.combinations(axes, n)]
    if mode == "axes":
        return [(), *((a,) for a in axes)]
    if isinstance(mode, str) or not isinstance(mode, Sequence) or not mode:
        raise ValueError(f"flips must be one of {FLIP_MODES} or a non-empty list of axis lists, got {mode!r}")
    flips = []
    for flip in mode:
        if isinstance(flip, (str, int)) or not isinstance(flip, Sequence):
            raise ValueError(f"flips: each pass is a list of spatial axes (e.g. [[], [1]]), got {flip!r} in {mode!r}")
        bad = [a for a in flip if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < spatial_dims]
        if bad or len(set(flip)) != len(flip):
            raise ValueError(f"flips: {list(flip)} is not a set of spatial axes 0..{spatial_dims - 1}")
        flips.append(tuple(sorted(flip)))  # flips along different axes commute
    return flips


def fold_checkpoints(models_dir: str | os.PathLike) -> dict[int, str]:
    """``{k: "models_dir/fold{k}/model.pt"}`` for every fold folder that holds a ``model.pt``, sorted by k."""
    models_dir = Path(models_dir)
    folds = {}
    if models_dir.is_dir():
        for sub in models_dir.iterdir():
            m = FOLD_DIR.match(sub.name)
            if m and (sub / "model.pt").is_file():
                folds[int(m.group(1))] = str(sub / "model.pt")
    return dict(sorted(folds.items()))


def find_checkpoints(models_dir: str | os.PathLike) -> list[str]:
    """Every ``models_dir/fold{k}/model.pt`` (sorted by k); without fold folders, ``models_dir/model.pt`` alone.

    Raises ``CheckpointError`` naming the folder when there is neither.
    """
    folds = fold_checkpoints(models_dir)
    if folds:
        return list(folds.values())
    if (Path(models_dir) / "model.pt").is_file():
        return [str(Path(models_dir) / "model.pt")]
    raise CheckpointError(
        f"{models_dir}: no fold*/model.pt and no model.pt; train folds (--fold k) or a single model first, "
        "or pass --ckpt_paths \"['a/model.pt', 'b/model.pt']\""
    )


def load_networks(
    network: torch.nn.Module,
    ckpt_paths: Sequence[str | os.PathLike],
    device: torch.device | str = "cpu",
    amp: Any = None,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> list[torch.nn.Module]:
    """One copy of ``network`` per checkpoint, weights loaded with ``common.checkpoint.load_weights``
    (weights-only, clear errors), in eval mode, made ready to run by ``prepare`` when given (e.g. the bundle's
    inference engine, so that an ensemble of one fold computes what the plain configs compute), else placed on
    ``device`` by ``amp.prepare_network`` (or moved there when no ``amp`` is given)."""
    if isinstance(ckpt_paths, (str, os.PathLike)) or not ckpt_paths:
        raise CheckpointError(f"expected a non-empty list of checkpoint files, got {ckpt_paths!r}")
    networks = []
    for path in ckpt_paths:
        net = load_weights(copy.deepcopy(network), path, map_location=device)
        if prepare is not None:
            net = prepare(net)
        else:
            net = amp.prepare_network(net, device) if amp is not None else net.to(device)
        networks.append(net.eval())
    return networks


def load_fold_networks(
    network: torch.nn.Module,
    models_dir: str | os.PathLike,
    num_folds: int,
    device: torch.device | str = "cpu",
    amp: Any = None,
) -> dict[int, torch.nn.Module]:
    """``{k: network of models_dir/fold{k}/model.pt}`` for exactly the folds ``0 .. num_folds - 1``.

    Raises ``CheckpointError`` naming the folder and the missing (or unexpected) folds otherwise.
    """
    found = fold_checkpoints(models_dir)
    missing = [k for k in range(num_folds) if k not in found]
    extra = [k for k in found if k >= num_folds]
    if missing or extra:
        problem = f"fold(s) {missing} have no model.pt" if missing else f"fold(s) {extra} are beyond num_folds"
        raise CheckpointError(
            f"{models_dir}: out-of-fold predictions need fold0..fold{num_folds - 1}/model.pt (num_folds "
            f"{num_folds}), but {problem}; train them with --fold k --num_folds {num_folds}, or set --num_folds"
        )
    return dict(zip(found, load_networks(network, list(found.values()), device, amp)))


def sigmoid_per_item(logits: torch.Tensor) -> torch.Tensor:
    """float32 sigmoid of each batch item on its own, as a bundle's postprocessing takes it after decollating the
    batch: torch's vectorised sigmoid rounds the last bit differently for different tensor lengths, so a sigmoid of
    the whole (B, 14) batch would differ from the plain configs' output in the 7th digit."""
    logits = logits.as_tensor() if hasattr(logits, "as_tensor") else logits  # MetaTensor -> Tensor
    logits = logits.float()
    prob = torch.empty_like(logits)
    for i in range(len(logits)):
        torch.sigmoid(logits[i], out=prob[i])
    return prob


class EnsembleInferer(Inferer):
    """Mean sigmoid probability over ``networks`` x flips, each pass run through ``inferer``.

    Args:
        inferer: the wrapped inferer, called as ``inferer(inputs, network)`` (e.g. the bundle's sliding window).
        networks: the ensemble's networks; ``None`` uses the network the engine passes (TTA of a single model).
        tta: flip the input (``flips``) in every pass; ``False`` (or "false") runs each network once.
        flips: ``"all"``, ``"axes"`` or a list of passes, see ``mirror_flips``.
        spatial_dims: number of trailing spatial dimensions of the (B, C, *spatial) input.
        flip_back: undo each flip on the output (dense outputs such as segmentations); ``False`` for outputs without
            spatial axes (classification).
        output: ``"logit"``: the logit of the mean probability, clamped to [eps, 1 - eps] so it stays finite (the
            bundle's sigmoid postprocessing then applies); ``"probability"``: the mean probability itself.
        eps: see ``output``.

    The sigmoid is taken per batch item (``sigmoid_per_item``) and the mean accumulated in float64, so one network
    without TTA, or K identical networks, give bit for bit the probabilities of the bundle's plain configs.
    """

    def __init__(
        self,
        inferer: Callable[..., Any],
        networks: Sequence[torch.nn.Module] | None = None,
        tta: bool | str = True,
        flips: str | Sequence[Sequence[int]] = "all",
        spatial_dims: int = 3,
        flip_back: bool = True,
        output: str = "logit",
        eps: float = 1e-6,
    ) -> None:
        self.inferer = inferer
        self.networks = list(networks) if networks is not None else None
        if self.networks is not None and not self.networks:
            raise ValueError("networks is empty: give at least one network, or None for the engine's network")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.flips = mirror_flips(flips, spatial_dims) if as_bool(tta) else [()]
        self.spatial_dims = spatial_dims
        self.flip_back = flip_back
        self.output = output
        self.eps = eps

    def passes(self, n_networks: int = 1) -> int:
        """Network evaluations per input (per sliding-window position): networks x flips."""
        return (len(self.networks) if self.networks is not None else n_networks) * len(self.flips)

    def probabilities(
        self, inputs: torch.Tensor, network: Callable[..., Any] | None = None, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The mean sigmoid probability over networks and flips (in the dtype of one pass's probability)."""
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
                    out = torch.flip(out, dims) if dims and self.flip_back else out
                    prob = sigmoid_per_item(out)
                    total = prob.double() if total is None else total + prob.double()
        assert total is not None
        return (total / (len(networks) * len(self.flips))).to(prob.dtype)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., Any] | None = None, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        mean = self.probabilities(inputs, network, *args, **kwargs)
        result = torch.logit(mean, eps=self.eps) if self.output == "logit" else mean
        # as MONAI's sliding window: the output takes the input's type and metadata (MetaTensor)
        return convert_to_dst_type(result, inputs, dtype=mean.dtype)[0]

    def describe(self) -> str:
        """One line for the run's log: models, flips, passes."""
        n = len(self.networks) if self.networks is not None else 1
        tta = f"{len(self.flips)} flips" if len(self.flips) > 1 else "no TTA"
        return f"{n} model(s) x {tta} = {self.passes()} passes per input"


class OutOfFoldInferer(Inferer):
    """Each batch item through the model of its own fold: item ``i`` with ``fold[i] == k`` is predicted by
    ``networks[k]`` (the fold model that validated on it, so never trained on it), with the same TTA options as
    ``EnsembleInferer``. The engine passes ``fold`` from the batch (``PrepareBatchExtraInput({"fold": "fold"})``).
    """

    def __init__(self, inferer: Callable[..., Any], networks: Mapping[int, torch.nn.Module], **options: Any) -> None:
        if not networks:
            raise ValueError("networks is empty: out-of-fold predictions need one network per fold")
        self.inferers = {int(k): EnsembleInferer(inferer, [net], **options) for k, net in networks.items()}

    def __call__(self, inputs: torch.Tensor, network: Any = None, fold: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        if fold is None:
            raise ValueError("OutOfFoldInferer needs each item's fold (a 'fold' key in the datalist items)")
        fold = torch.as_tensor(fold).reshape(-1).to(device="cpu", dtype=torch.long)
        if len(fold) != len(inputs):
            raise ValueError(f"{len(fold)} fold numbers for a batch of {len(inputs)}")
        unknown = sorted({int(k) for k in fold} - set(self.inferers))
        if unknown:
            raise ValueError(f"items of fold(s) {unknown}, but only folds {sorted(self.inferers)} have a network")
        result: torch.Tensor | None = None
        for k in sorted({int(k) for k in fold}):
            rows = (fold == k).nonzero().reshape(-1).to(inputs.device)
            out = self.inferers[k](inputs[rows])
            if result is None:
                result = out.new_zeros((len(inputs), *out.shape[1:]))
            result[rows] = out
        assert result is not None
        return result

    def describe(self) -> str:
        """One line for the run's log."""
        one = next(iter(self.inferers.values()))
        tta = f"{len(one.flips)} flips" if len(one.flips) > 1 else "no TTA"
        return f"out-of-fold: each item by its own fold's model ({len(self.inferers)} folds) x {tta}"
