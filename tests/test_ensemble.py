"""common.ensemble's bundle-independent parts: explicit flip lists, outputs without spatial axes (classification),
the probability output, exactness for identical networks, fold checkpoints (find_checkpoints, for every bundle's
*_ensemble.json) and out-of-fold routing.
(BraTS's 3D mirroring and its configs: bundles/brats_segmentation/tests/test_brats_ensemble.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.inferers import SimpleInferer

from common.checkpoint import CheckpointError, atomic_save
from common.ensemble import (
    EnsembleInferer,
    OutOfFoldInferer,
    find_checkpoints,
    fold_checkpoints,
    load_fold_networks,
    load_networks,
    mirror_flips,
)


def _classifier(seed: int) -> torch.nn.Module:
    """(B, 1, H, W) -> (B, 3) logits; not left-right symmetric (a linear layer on the flattened image)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 6 * 8, 3)).eval()


def test_explicit_flip_lists() -> None:
    assert mirror_flips([[], [1]], spatial_dims=2) == [(), (1,)]
    assert mirror_flips([[0, 1]], spatial_dims=2) == [(0, 1)]
    for bad in ([[2]], [[-1]], [[1, 1]], [1], "horizontal", [], [[True]]):
        with pytest.raises(ValueError, match="flips"):
            mirror_flips(bad, spatial_dims=2)


def test_classification_tta_is_the_mean_of_the_plain_and_the_flipped_image() -> None:
    net = _classifier(0)
    x = torch.randn(4, 1, 6, 8)
    with torch.no_grad():
        by_hand = (torch.sigmoid(net(x)) + torch.sigmoid(net(torch.flip(x, [3])))) / 2
        tta = EnsembleInferer(SimpleInferer(), tta=True, flips=[[], [1]], spatial_dims=2, flip_back=False)
        got = tta(x, net)  # default output: the logit of the mean
        prob = EnsembleInferer(
            SimpleInferer(), tta=True, flips=[[], [1]], spatial_dims=2, flip_back=False, output="probability"
        )(x, net)
        plain = torch.sigmoid(net(x))
    torch.testing.assert_close(prob, by_hand, atol=1e-7, rtol=0)
    torch.testing.assert_close(torch.sigmoid(got), by_hand, atol=1e-6, rtol=0)
    assert (prob - plain).abs().max() > 1e-3  # the flip really changes this network's output
    assert tta.passes() == 2 and "2 flips" in tta.describe()


@pytest.mark.parametrize("copies", [1, 2, 3, 5, 7])
def test_identical_networks_give_exactly_one_networks_probability(copies: int) -> None:
    nets = [_classifier(1) for _ in range(copies)]
    x = torch.randn(5, 1, 6, 8)
    ens = EnsembleInferer(SimpleInferer(), nets, tta=False, spatial_dims=2, flip_back=False, output="probability")
    with torch.no_grad():
        assert torch.equal(ens(x), torch.sigmoid(nets[0](x)))


def test_bad_output_mode_and_empty_networks() -> None:
    with pytest.raises(ValueError, match="output"):
        EnsembleInferer(SimpleInferer(), output="logits")
    with pytest.raises(ValueError, match="empty"):
        EnsembleInferer(SimpleInferer(), networks=[])


def _save(net: torch.nn.Module, path: Path) -> None:
    atomic_save({"model": net.state_dict()}, path)


def test_fold_checkpoints_and_load_fold_networks(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for k in (1, 0, 10):
        _save(_classifier(k), models / f"fold{k}" / "model.pt")
    (models / "fold4").mkdir()  # still training: no model.pt
    _save(_classifier(9), models / "model.pt")
    assert fold_checkpoints(models) == {k: str(models / f"fold{k}" / "model.pt") for k in (0, 1, 10)}
    assert fold_checkpoints(tmp_path / "nothing") == {}
    with pytest.raises(CheckpointError, match=r"models: out-of-fold .*fold\(s\) \[2\] have no model.pt"):
        load_fold_networks(_classifier(0), models, num_folds=3)
    with pytest.raises(CheckpointError, match=r"fold\(s\) \[10\] are beyond num_folds"):
        load_fold_networks(_classifier(0), models, num_folds=2)
    (models / "fold10" / "model.pt").unlink()
    nets = load_fold_networks(_classifier(5), models, num_folds=2)
    assert sorted(nets) == [0, 1]
    for k, net in nets.items():
        assert torch.equal(net[1].weight, _classifier(k)[1].weight) and not net.training
    with pytest.raises(CheckpointError, match="non-empty list"):
        load_networks(_classifier(0), str(models / "model.pt"))


def test_find_checkpoints_by_fold_number(tmp_path: Path) -> None:
    """The folds' model.pt sorted by fold number (not by name), skipping a fold still training; without folds the
    single models/model.pt; neither: a CheckpointError (every bundle's *_ensemble.json finds its models so)."""
    models = tmp_path / "models"
    with pytest.raises(CheckpointError, match="no fold"):
        find_checkpoints(models)
    atomic_save({}, models / "model.pt")
    assert find_checkpoints(models) == [str(models / "model.pt")]
    for k in (10, 2, 0):
        atomic_save({}, models / f"fold{k}" / "model.pt")
    (models / "fold7").mkdir()  # a fold still training: no model.pt yet
    assert find_checkpoints(models) == [str(models / f"fold{k}" / "model.pt") for k in (0, 2, 10)]


def test_out_of_fold_routes_each_item_to_its_folds_network() -> None:
    nets = {0: _classifier(10), 1: _classifier(11), 2: _classifier(12)}
    x = torch.randn(5, 1, 6, 8)
    fold = torch.tensor([2, 0, 2, 1, 0])
    oof = OutOfFoldInferer(SimpleInferer(), nets, tta=True, flips=[[], [1]], spatial_dims=2, flip_back=False,
                           output="probability")  # fmt: skip
    with torch.no_grad():
        got = oof(x, None, fold=fold)
        for i, k in enumerate(fold.tolist()):
            xi = x[i : i + 1]
            want = (torch.sigmoid(nets[k](xi)) + torch.sigmoid(nets[k](torch.flip(xi, [3])))) / 2
            torch.testing.assert_close(got[i : i + 1], want, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match=r"fold\(s\) \[3\]"):
        oof(x, None, fold=torch.tensor([0, 1, 3, 0, 0]))
    with pytest.raises(ValueError, match="'fold' key"):
        oof(x, None)
    assert "3 folds" in oof.describe()
