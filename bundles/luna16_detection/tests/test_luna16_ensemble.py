"""luna16_detection: folds over the official subsets, mirroring test-time augmentation of boxes, fold ensembles
and box fusion (weighted box fusion, NMS over the union).

Tiny synthetic scans in the real layout, CPU, fp32 (``use_amp`` off) so that the configs' outputs can be compared
with hand-computed references exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data.box_utils import non_max_suppression

from benchmarks.scoring import luna16_froc, read_findings, read_submission
from common.checkpoint import atomic_save
from common.ensemble import mirror_flips
from scripts.engines import DetectorInferer
from scripts.ensemble import DetectionEnsembleInferer, checkpoint_folds, fuse_nms, fuse_wbf, unflip_boxes
from scripts.prepare import fold_subsets
from scripts.synthetic import generate
from tests.helpers import bundle_workflow

BUNDLE = Path(__file__).resolve().parents[1]
FP32 = {"use_amp": False, "num_workers": 0}
ALL_FLIPS = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]  # written out, not from mirror_flips
KEYS = ("box", "label", "label_scores")


def _configs(*names: str) -> list[str]:
    return [str(BUNDLE / "configs" / n) for n in names]


def _workflow(names: tuple[str, ...], workflow_type: str, run_id: str, **override) -> ConfigWorkflow:
    return bundle_workflow(BUNDLE, names, workflow_type, run_id, **override)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 scans, 2 per subset (subset0 holds one scan with nodules and excluded findings, one without nodules)."""
    return generate(tmp_path_factory.mktemp("luna_ens"), n_scans=20, size=(40, 40, 20), empty_fraction=0.3, seed=14)


# ---------------------------------------------------------------- folds over the official subsets


@pytest.mark.parametrize(
    "fold, training, validation",
    [(0, [2, 3, 4, 5, 6, 7, 8, 9], [1]), (3, [0, 1, 2, 5, 6, 7, 8, 9], [4]), (9, [1, 2, 3, 4, 5, 6, 7, 8], [0])],
)
def test_fold_k_tests_on_subset_k_and_validates_on_the_next(fold: int, training: list[int], validation: list[int]):
    assert fold_subsets(fold) == {"training": training, "validation": validation, "test": [fold]}


def test_the_ten_folds_partition_the_subsets() -> None:
    tests, validations = [], []
    for k in range(10):
        parts = fold_subsets(k)
        train, val, test = (set(parts[p]) for p in ("training", "validation", "test"))
        assert not (train & val or train & test or val & test)  # no subset in two roles
        assert train | val | test == set(range(10)) and len(train) == 8
        tests += parts["test"]
        validations += parts["validation"]
    assert sorted(tests) == sorted(validations) == list(range(10))  # each subset tested once, validated once
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="fold must be 0..9"):
            fold_subsets(bad)


def _subsets(items: list[dict]) -> list[int]:
    return sorted({i["subset"] for i in items})


def test_fold_override_in_train_json(data: Path, tmp_path: Path) -> None:
    """``--fold 3``: subset 3 is the test subset of evaluate.json, subset 4 selects the model, the other 8 train;
    checkpoints go to models/fold3/, outputs to eval/fold3/. Without --fold: official fold 0's split in models/ and
    eval/, as before folds existed."""
    wf = _workflow(("train.json", "evaluate.json"), "train", "evaluating", dataset_dir=str(data),
                   bundle_root=str(tmp_path), fold=3, **FP32)  # fmt: skip
    parsed = wf.parser.get_parsed_content
    assert parsed("ckpt_dir") == f"{tmp_path}/models/fold3" and parsed("output_dir") == f"{tmp_path}/eval/fold3"
    assert parsed("ckpt_path") == f"{tmp_path}/models/fold3/model.pt"
    assert _subsets(parsed("train#dataset#data")) == [0, 1, 2, 5, 6, 7, 8, 9]
    assert _subsets(parsed("datalist")["validation"]) == [4]
    assert _subsets(parsed("validate#dataset#data")) == [3]  # evaluate.json: the fold's test subset
    assert parsed("validate#key_metric#test_cpm").output_dir == f"{tmp_path}/eval/fold3"

    default = _workflow(("train.json",), "train", "training", dataset_dir=str(data), bundle_root=str(tmp_path / "d"),
                        **FP32)  # fmt: skip
    parsed = default.parser.get_parsed_content
    assert parsed("ckpt_dir") == f"{tmp_path}/d/models" and parsed("output_dir") == f"{tmp_path}/d/eval"
    assert _subsets(parsed("train#dataset#data")) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert _subsets(parsed("validate#dataset#data")) == [1]


def test_fold_with_a_missing_subset_names_it(data: Path, tmp_path: Path) -> None:
    """A partial download: fold 3 validates on subset4; without it, --fold 3 stops naming fold 3 and subset4."""
    import shutil

    from scripts.prepare import LunaDataError  # the class the config raises: imported when this test runs

    root = tmp_path / "LUNA16"
    shutil.copytree(data, root)
    shutil.rmtree(root / "subset4")
    wf = _workflow(("train.json",), "train", "training", dataset_dir=str(root), bundle_root=str(tmp_path), fold=3,
                   **FP32)  # fmt: skip
    with pytest.raises(Exception) as e:
        wf.parser.get_parsed_content("train#dataset#data")
    cause = e.value
    while cause is not None and not isinstance(cause, LunaDataError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None, e.value
    assert str(cause).startswith(f"{root}: fold 3 cannot train: it trains on subset0..subset2, subset5..subset9")
    assert "validates on subset4, but subset4 is missing" in str(cause)
    # fold 4 (test subset4, the missing one) still trains
    ok = _workflow(("train.json",), "train", "training", dataset_dir=str(root), bundle_root=str(tmp_path), fold=4,
                   **FP32)  # fmt: skip
    assert _subsets(ok.parser.get_parsed_content("train#dataset#data")) == [0, 1, 2, 3, 6, 7, 8, 9]


def test_scoring_an_ensemble_on_its_folds_subsets_warns(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An ensemble of folds 0, 1 and 9 scored on subset0: fold 1 trained on it and fold 9 selected its model on it
    (fold 0 holds it out); one warning names both, since that score is not held out."""
    from scripts.prepare import eval_datalist

    with caplog.at_level(logging.WARNING):
        assert _subsets(eval_datalist(data, [0], fold=[0, 1, 9])["test"]) == [0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "evaluating on subsets that the ensemble's folds use (fold 1: subset0 in its training split; fold 9: subset0 "
        "in its validation split): not a held-out score for an ensemble of folds 0, 1, 9; score an ensemble on "
        "scans outside its folds' subsets (another --dataset_dir)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        eval_datalist(data, [0], fold=[0])
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------- mirror flips of boxes


def test_unflip_boxes_hand_values() -> None:
    """Along an axis of n voxels a box [x1, x2] maps to [n - x2, n - x1] (MONAI's box convention: voxel i spans
    [i, i + 1]), and back."""
    box = torch.tensor([[2.0, 3.0, 4.0, 6.0, 8.0, 10.0]])
    size = [20, 30, 40]
    expected = {
        (0,): [14.0, 3.0, 4.0, 18.0, 8.0, 10.0],
        (2,): [2.0, 3.0, 30.0, 6.0, 8.0, 36.0],
        (0, 1): [14.0, 22.0, 4.0, 18.0, 27.0, 10.0],
        (0, 1, 2): [14.0, 22.0, 30.0, 18.0, 27.0, 36.0],
    }
    for axes, want in expected.items():
        flipped = unflip_boxes(box, size, axes)
        assert flipped.tolist() == [want], axes
        assert torch.equal(unflip_boxes(flipped, size, axes), box), axes
    assert torch.equal(unflip_boxes(box, size, ()), box)


def _bounding_box(volume: torch.Tensor) -> torch.Tensor:
    """Box of the voxels above 0.5 of a (C, x, y, z) volume: voxels i..j give [i, j + 1]."""
    idx = (volume[0] > 0.5).nonzero()
    return torch.cat([idx.min(0).values, idx.max(0).values + 1]).double()[None]


@pytest.mark.parametrize("axes", ALL_FLIPS)
def test_flip_round_trip_on_image_content(axes: tuple[int, ...]) -> None:
    """Both ways, on the voxels themselves: the box of an off-centre block in the flipped volume is the flipped
    box of the block, and flipping it back gives the block's box."""
    volume = torch.zeros(1, 20, 30, 40)
    volume[0, 2:6, 3:8, 4:10] = 1.0
    original = _bounding_box(volume)
    assert original.tolist() == [[2, 3, 4, 6, 8, 10]]
    in_flipped = _bounding_box(torch.flip(volume, [1 + a for a in axes]) if axes else volume)
    size = list(volume.shape[1:])
    assert torch.equal(unflip_boxes(original, size, axes), in_flipped)  # original -> flipped
    assert torch.equal(unflip_boxes(in_flipped, size, axes), original)  # flipped -> original


class BlockDetector(torch.nn.Module):
    """Stands in for RetinaNetDetector: one box around the voxels above 0.5, scored by their mean intensity. It
    follows every flip of its input exactly, so TTA must give its plain box back."""

    target_box_key, target_label_key, pred_score_key = KEYS

    def __init__(self) -> None:
        super().__init__()
        self.network = torch.nn.Identity()
        self.box_selector = SimpleNamespace(nms_thresh=0.22, detections_per_img=300)

    def forward(self, images: list[torch.Tensor], use_inferer: bool = False) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            score = image[0][image[0] > 0.5].mean().reshape(1)
            out.append({"box": _bounding_box(image).float(), "label": torch.zeros(1, dtype=torch.long),
                        "label_scores": score})  # fmt: skip
        return out


def test_mirror_flips_and_the_tta_switch() -> None:
    assert sorted(mirror_flips("all")) == sorted(ALL_FLIPS) and mirror_flips("all")[0] == ()
    assert mirror_flips("axes") == [(), (0,), (1,), (2,)]
    assert mirror_flips([[], [1, 0], [2]]) == [(), (0, 1), (2,)]  # an explicit choice, e.g. from --tta_flips
    for bad in ("some", [], [[3]], [1, 2]):
        with pytest.raises(ValueError, match="flips"):
            mirror_flips(bad)
    inferer = DetectorInferer(BlockDetector(), roi_size=[64, 64, 64])
    # `monai.bundle run ... --tta false` passes the string "false" (python-fire), which is truthy
    for value, passes in ((True, 8), ("true", 8), (False, 1), ("false", 1), ("0", 1)):
        assert DetectionEnsembleInferer(inferer, tta=value).passes() == passes, value
    with pytest.raises(ValueError, match="fusion"):
        DetectionEnsembleInferer(inferer, fusion="mean")


@pytest.mark.parametrize("fusion", ["wbf", "nms"])
@pytest.mark.parametrize("flips", ["all", "axes"])
def test_tta_of_a_flip_following_detector_gives_its_plain_box(fusion: str, flips: str) -> None:
    volume = torch.zeros(1, 20, 30, 40)
    volume[0, 2:6, 3:8, 4:10] = 0.8
    volume[0, 2, 3, 4] = 1.0  # mean 0.8017: the score is not a round number
    inferer = DetectorInferer(BlockDetector(), roi_size=[64, 64, 64])
    ens = DetectionEnsembleInferer(inferer, tta=True, flips=flips, fusion=fusion)
    passes = ens.pass_predictions(volume)
    assert len(passes) == (8 if flips == "all" else 4) == ens.passes()
    for p in passes:  # every pass, mapped back, lands on the block
        assert p["box"].tolist() == [[2.0, 3.0, 4.0, 6.0, 8.0, 10.0]]
    fused = ens([volume])[0]
    assert fused["box"].tolist() == [[2.0, 3.0, 4.0, 6.0, 8.0, 10.0]]
    assert torch.equal(fused["label_scores"], passes[0]["label_scores"]) and fused["label"].tolist() == [0]


# ---------------------------------------------------------------- fusion on hand-built boxes


def _pass(boxes: list[list[float]], scores: list[float], labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    return {
        "box": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6),
        "label": torch.tensor(labels if labels is not None else [0] * len(scores), dtype=torch.long),
        "label_scores": torch.tensor(scores, dtype=torch.float32),
    }


def test_weighted_box_fusion_hand_computed() -> None:
    """Three passes (N = 3). Cluster 1: a1 (0.9), b1 (0.6; IoU with a1 = 729/1271 = 0.574) and c1 (0.3; IoU with
    the fused a1+b1 box [0.4, 10.4] = 921.6/1278.4 = 0.721): box = sum(score * box) / 1.8, score = mean 0.6 x 3/3.
    Cluster 2: a2 (0.3) and b2 (0.2; IoU 1000/1100): z2 = (0.3 * 60 + 0.2 * 61) / 0.5 = 60.4, score = 0.25 x 2/3.
    c2 has label 1: its own cluster although it is a2's box, score 0.6 x 1/3. d (0.45) overlaps nothing: 0.45/3."""
    a = _pass([[0, 0, 0, 10, 10, 10], [50, 50, 50, 60, 60, 60]], [0.9, 0.3])
    b = _pass([[1, 1, 1, 11, 11, 11], [50, 50, 50, 60, 60, 61]], [0.6, 0.2])
    c = _pass([[0, 0, 0, 10, 10, 12], [50, 50, 50, 60, 60, 60], [30, 30, 30, 34, 34, 34]], [0.3, 0.6, 0.45], [0, 1, 0])
    fused = fuse_wbf([a, b, c], iou_thresh=0.22)
    third = 1 / 3  # cluster 1: x1 = 0.6 / 1.8, x2 = (9 + 6.6 + 3) / 1.8, z2 = (9 + 6.6 + 3.6) / 1.8
    expected = [  # in descending fused score
        ([third, third, third, 10 + third, 10 + third, 10 + 2 * third], 0.6, 0),
        ([50, 50, 50, 60, 60, 60], 0.2, 1),
        ([50, 50, 50, 60, 60, 60.4], 0.25 * 2 / 3, 0),
        ([30, 30, 30, 34, 34, 34], 0.15, 0),
    ]
    assert len(fused["box"]) == len(expected)
    for k, (box, score, label) in enumerate(expected):
        assert fused["box"][k].tolist() == pytest.approx(box, abs=1e-5), k
        assert fused["label_scores"][k].item() == pytest.approx(score, abs=1e-6), k
        assert fused["label"][k].item() == label, k
    assert fused["box"].dtype == torch.float32 and fused["label"].dtype == torch.long


def test_weighted_box_fusion_clusters_larger_than_the_passes() -> None:
    """One pass with two overlapping boxes (T = 2 > N = 1): the score is their mean, not scaled up by T/N."""
    fused = fuse_wbf([_pass([[0, 0, 0, 10, 10, 10], [0, 0, 0, 10, 10, 11]], [0.8, 0.4])], iou_thresh=0.5)
    assert fused["box"].tolist() == [pytest.approx([0, 0, 0, 10, 10, 10 + 0.4 / 1.2], abs=1e-6)]
    assert fused["label_scores"].tolist() == [pytest.approx(0.6, abs=1e-7)]
    empty = fuse_wbf([_pass([], []), _pass([], [])], iou_thresh=0.22)
    assert all(v.shape[0] == 0 for v in empty.values())


def test_nms_fusion_is_monai_nms_on_the_concatenation() -> None:
    torch.manual_seed(0)
    passes = []
    for n in (40, 25, 33):
        lo = torch.rand(n, 3) * 30
        passes.append(_pass((torch.cat([lo, lo + 2 + torch.rand(n, 3) * 8], 1)).tolist(), torch.rand(n).tolist()))
    boxes = torch.cat([p["box"] for p in passes])
    scores = torch.cat([p["label_scores"] for p in passes])
    keep = non_max_suppression(boxes, scores, 0.22)
    fused = fuse_nms(passes, iou_thresh=0.22)
    assert 10 < len(keep) < len(boxes)  # NMS removed some boxes, kept others
    assert torch.equal(fused["box"], boxes[keep]) and torch.equal(fused["label_scores"], scores[keep])
    capped = fuse_nms(passes, iou_thresh=0.22, max_detections=5)
    assert torch.equal(capped["box"], boxes[keep[:5]])


# ---------------------------------------------------------------- ensembles through the configs


def _random_detector_weights(seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights of the demo network; a zero class bias puts scores near 0.5, so every scan gets boxes."""
    parser = ConfigParser()
    parser.read_config(_configs("train.json", "demo.json"))
    torch.manual_seed(seed)
    state = parser.get_parsed_content("network_def").state_dict()
    state["classification_head.cls_logits.bias"].zero_()
    return state


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    atomic_save({"model": state}, path)
    return str(path)


@pytest.mark.parametrize("fusion", ["wbf", "nms"])
def test_ensemble_of_identical_models_without_tta_is_the_single_model(data: Path, tmp_path: Path, fusion: str):
    """models/fold{0,1,2} hold the same weights: inference_ensemble.json with --tta false writes exactly the
    submission CSV (world mm) and the boxes of inference.json with that model."""
    state = _random_detector_weights(1)
    paths = [_save(state, tmp_path / "models" / f"fold{k}" / "model.pt") for k in (0, 1, 2)]
    common = {"dataset_dir": str(data / "subset0"), "bundle_root": str(tmp_path), **FP32}
    plain = _workflow(("inference.json", "demo.json"), "infer", "run", ckpt_path=paths[0],
                      output_dir=str(tmp_path / "plain"), **common)  # fmt: skip
    ens = _workflow(("inference.json", "demo.json", "inference_ensemble.json"), "infer", "run", tta=False,
                    fusion=fusion, output_dir=str(tmp_path / "ens"), **common)  # fmt: skip
    assert ens.parser.get_parsed_content("ckpt_paths") == paths
    plain.run()
    ens.run()
    submission = (tmp_path / "plain" / "submission.csv").read_text()
    assert len(submission.splitlines()) > 100  # many boxes per scan
    assert (tmp_path / "ens" / "submission.csv").read_text() == submission

    inferer = ens.parser.get_parsed_content("ensemble_inferer")
    assert inferer.passes() == 3
    image = ens.parser.get_parsed_content("dataset")[0]["image"]
    single = plain.parser.get_parsed_content("inferer")([image])[0]
    fused = inferer([image])[0]
    for key in KEYS:
        assert torch.equal(fused[key], single[key]), key


def test_evaluate_ensemble_gives_the_official_froc(data: Path, tmp_path: Path) -> None:
    """evaluate_ensemble.json over models/fold0 and models/fold1 with TTA: eval/ensemble/froc.json holds the LUNA16
    FROC keys, its CPM and sensitivities equal those recomputed by independent code (benchmarks/scoring.py) from
    its predictions.csv, and those predictions are what inference_ensemble.json writes for the same scans."""
    for k in (0, 1):
        _save(_random_detector_weights(10 + k), tmp_path / "models" / f"fold{k}" / "model.pt")
    common = {"bundle_root": str(tmp_path), "tta_flips": "axes", **FP32}
    ev = _workflow(("train.json", "evaluate.json", "demo.json", "evaluate_ensemble.json"), "train", "evaluating",
                   dataset_dir=str(data), **common)  # fmt: skip
    ev.parser["validate#key_metric#test_cpm#n_bootstrap"] = 20
    assert ev.parser.get_parsed_content("ensemble_inferer").passes() == 8  # 2 models x 4 flips
    ev.run()
    out = tmp_path / "eval" / "ensemble"
    froc = json.loads((out / "froc.json").read_text())
    rates = ["0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"]
    assert sorted(froc["sensitivity_at_fp_rates"], key=float) == rates
    scans = sorted(m.stem for m in (data / "subset0").glob("*.mhd"))
    predictions = read_submission(out / "predictions.csv")
    assert sorted(predictions) == scans and froc["n_scans"] == len(scans)
    nodules, excluded = read_findings(data / "annotations.csv"), read_findings(data / "annotations_excluded.csv")
    oracle = luna16_froc(predictions, nodules, excluded, scans)
    assert froc["cpm"] == pytest.approx(oracle["cpm"], abs=1e-9)
    for rate in rates:
        assert froc["sensitivity_at_fp_rates"][rate] == pytest.approx(oracle[f"sensitivity@{float(rate)}fp"])
    assert froc["n_nodules"] == oracle["n_nodules"] > 0 and oracle["n_false_positives"] > 0

    inf = _workflow(("inference.json", "demo.json", "inference_ensemble.json"), "infer", "run",
                    dataset_dir=str(data / "subset0"), **common)  # fmt: skip
    inf.run()
    submission = (tmp_path / "eval" / "inference_ensemble" / "submission.csv").read_text()
    assert submission == (out / "predictions.csv").read_text()


def test_checkpoint_folds_names_the_ensembles_folds() -> None:
    """evaluate_ensemble.json's ``ensemble_folds``: the fold numbers of the checkpoints that
    common.ensemble.find_checkpoints found (tests/test_ensemble.py), for eval_datalist's held-out warning; a
    single models/model.pt has none, and a fold given twice counts once."""
    paths = ["run/models/fold10/model.pt", "run/models/fold2/model.pt", "run/models/model.pt", "b/fold2/model.pt"]
    assert checkpoint_folds(paths) == [2, 10]
    assert checkpoint_folds(["run/models/model.pt", "run/models/foldx/model.pt"]) == []
