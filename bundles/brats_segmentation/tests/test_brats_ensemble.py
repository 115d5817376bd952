"""brats_segmentation: cross-validation folds, mirroring test-time augmentation, fold ensembles, the U-Net override.

Tiny synthetic volumes (48x48x32) in the real 2021 and 2023 layouts, CPU only, fp32 (``use_amp`` off) so that
hand-computed references match the configs' outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import DynUNet, SegResNet

from benchmarks.scoring import score_brats_segmentations
from common.checkpoint import atomic_save
from common.ensemble import EnsembleInferer, mirror_flips
from scripts.brats import convention
from scripts.prepare import fold_split, load_split, prepare, split_cases
from scripts.synthetic import generate
from tests.helpers import bundle_workflow

BUNDLE = Path(__file__).resolve().parents[1]
SIZE = (48, 48, 32)
TINY = {
    "epochs": 1,
    "val_interval": 1,
    "init_filters": 8,
    "roi_size": [32, 32, 32],
    "val_roi_size": [48, 48, 32],
    "num_workers": 0,
    "learning_rate": 0.002,
    "use_amp": False,
}
INFER = {"init_filters": 8, "val_roi_size": [48, 48, 32], "use_amp": False}
ALL_FLIPS = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]  # written out, not from mirror_flips


def _configs(*names: str) -> list[str]:
    return [str(BUNDLE / "configs" / n) for n in names]


def _workflow(config_files: list[str], workflow_type: str, run_id: str, **override) -> ConfigWorkflow:
    return bundle_workflow(BUNDLE, config_files, workflow_type, run_id, **override)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("brats_ens")
    generate(root / "BraTS2021", n_cases=6, layout="2021", size=SIZE, seed=4)
    generate(root / "BraTS2023", n_cases=1, layout="2023", size=SIZE, seed=5)
    return {"2021": root / "BraTS2021", "2023": root / "BraTS2023"}


# ---------------------------------------------------------------- folds


def _items(n: int) -> list[dict]:
    return [{"case": f"case{i:03d}", "edition": "2021"} for i in range(n)]


@pytest.mark.parametrize("n_cases, num_folds", [(40, 5), (23, 3), (7, 2), (12, 6)])
def test_folds_are_disjoint_cover_the_non_test_cases_and_never_hold_a_test_case(n_cases: int, num_folds: int) -> None:
    datalist = split_cases(_items(n_cases), seed=12345)
    non_test = {i["case"] for k in ("training", "validation") for i in datalist[k]}
    test = [i["case"] for i in datalist["testing"]]
    seen: list[str] = []
    for k in range(num_folds):
        fold = fold_split(datalist, k, num_folds, seed=12345)
        train, val = ([i["case"] for i in fold[p]] for p in ("training", "validation"))
        assert [i["case"] for i in fold["testing"]] == test  # the test part stays fixed
        assert not set(test) & (set(train) | set(val))
        assert set(train) | set(val) == non_test and len(train) + len(val) == len(non_test)  # disjoint, complete
        assert abs(len(val) - len(non_test) / num_folds) < 1  # near-equal parts
        assert (fold["fold"], fold["num_folds"]) == (k, num_folds)
        seen += val
    assert sorted(seen) == sorted(non_test)  # each non-test case validates in exactly one fold


def test_folds_are_stable_for_a_seed_and_change_with_it() -> None:
    datalist = split_cases(_items(30), seed=12345)

    def folds(seed: int) -> list[list[str]]:
        return [[i["case"] for i in fold_split(datalist, k, 3, seed)["validation"]] for k in range(3)]

    assert folds(7) == folds(7)
    assert folds(7) != folds(8)
    # the same cases in another order (another datalist order, e.g. a rerun of prepare) give the same folds
    shuffled = {**datalist, "training": datalist["training"][::-1], "validation": datalist["validation"][::-1]}
    assert [[i["case"] for i in fold_split(shuffled, k, 3, 7)["validation"]] for k in range(3)] == folds(7)


@pytest.mark.parametrize("fold, num_folds", [(3, 3), (-1, 3), (0, 1), (1.0, 3), (True, 3)])
def test_bad_fold_is_refused(fold, num_folds: int) -> None:
    with pytest.raises(ValueError, match="fold"):
        fold_split(split_cases(_items(10)), fold, num_folds)


def test_fold_override_in_train_json(data: dict[str, Path], tmp_path: Path) -> None:
    """``--fold 2 --num_folds 3``: fold 2's cases, checkpoints in models/fold2/, datalist in eval/fold2/; the test
    split of evaluate.json is the single split's; without --fold nothing changes (models/, the 70/15/15 split)."""
    single = prepare(data["2021"])
    wf = _workflow(
        _configs("train.json", "evaluate.json"),
        "train",
        "evaluating",
        dataset_dir=str(data["2021"]),
        bundle_root=str(tmp_path),
        fold=2,
        num_folds=3,
        **TINY,
    )
    parsed = wf.parser.get_parsed_content
    expected = fold_split(single, 2, 3, seed=12345)
    assert parsed("ckpt_dir") == f"{tmp_path}/models/fold2"
    assert parsed("ckpt_path") == f"{tmp_path}/models/fold2/model.pt"
    assert parsed("train#dataset#data") == expected["training"]
    assert parsed("val_datalist") == expected["validation"]  # what train.json validates on (for checkpoint choice)
    assert parsed("validate#dataset#data") == expected["testing"] == single["testing"]  # evaluate.json: test split
    written = json.loads((tmp_path / "eval" / "fold2" / "datalist.json").read_text())
    assert written["fold"] == 2 and written["validation"] == expected["validation"]
    assert load_split(data["2021"], "validation", fold=2, num_folds=3) == expected["validation"]

    default = _workflow(
        _configs("train.json"),
        "train",
        "training",
        dataset_dir=str(data["2021"]),
        bundle_root=str(tmp_path / "d"),
        **TINY,
    )
    assert default.parser.get_parsed_content("ckpt_dir") == f"{tmp_path}/d/models"
    assert default.parser.get_parsed_content("train#dataset#data") == single["training"]
    assert default.parser.get_parsed_content("validate#dataset#data") == single["validation"]


# ---------------------------------------------------------------- mirroring test-time augmentation


def test_mirror_flips_and_the_tta_switch() -> None:
    assert sorted(mirror_flips("all")) == sorted(tuple(a - 2 for a in f) for f in ALL_FLIPS)
    assert mirror_flips("axes") == [(), (0,), (1,), (2,)]
    with pytest.raises(ValueError):
        mirror_flips("some")
    # `monai.bundle run ... --tta false` passes the string "false" (python-fire), which is truthy
    for value, passes in ((True, 8), ("true", 8), (False, 1), ("false", 1), ("False", 1), ("0", 1)):
        assert len(EnsembleInferer(SimpleInferer(), tta=value).flips) == passes, value
    with pytest.raises(ValueError, match="true or false"):
        EnsembleInferer(SimpleInferer(), tta="maybe")


@pytest.mark.parametrize("flips", ["all", "axes"])
def test_tta_of_a_mirror_equivariant_network_equals_its_plain_output(flips: str) -> None:
    """A 1x1x1 convolution commutes with every flip: TTA must return exactly its plain output, in place (a flip not
    undone, or undone along another axis, moves voxels)."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 3, kernel_size=1)
    x = torch.randn(1, 4, 20, 16, 12)
    inner = SlidingWindowInferer(roi_size=(16, 16, 8), overlap=0.5)
    with torch.no_grad():
        plain = torch.sigmoid(inner(x, net))
        tta = EnsembleInferer(inner, tta=True, flips=flips).probabilities(x, net)
        out = EnsembleInferer(inner, tta=True, flips=flips)(x, net)
    torch.testing.assert_close(tta, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.sigmoid(out), plain, atol=1e-6, rtol=0)  # logit of the mean, for sigmoid


def test_tta_of_a_non_equivariant_network_is_the_mean_of_the_flipped_outputs() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(4, 3, kernel_size=3, padding=1), torch.nn.Conv3d(3, 3, kernel_size=3))
    x = torch.randn(1, 4, 12, 10, 8)
    inner = SimpleInferer()
    pad = torch.nn.functional.pad

    def flipped(dims: tuple[int, ...]) -> torch.Tensor:
        y = net(torch.flip(x, dims)) if dims else net(x)
        y = pad(y, (1, 1, 1, 1, 1, 1))  # the second conv has no padding: the output is 2 voxels smaller per axis
        return torch.sigmoid(torch.flip(y, dims) if dims else y)

    def inner_padded(inputs: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        return pad(inner(inputs, network), (1, 1, 1, 1, 1, 1))

    with torch.no_grad():
        expected = {
            "all": sum(flipped(f) for f in ALL_FLIPS) / 8,
            "axes": sum(flipped(f) for f in [(), (2,), (3,), (4,)]) / 4,
        }
        plain = flipped(())
        for flips, want in expected.items():
            got = EnsembleInferer(inner_padded, tta=True, flips=flips).probabilities(x, net)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
            assert (got - plain).abs().max() > 1e-2  # the network really is not mirror-equivariant
        off = EnsembleInferer(inner_padded, tta=False).probabilities(x, net)
    torch.testing.assert_close(off, plain, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- fold ensembles through the configs


def _segresnet(seed: int, ckpt: Path, bias: list[float]) -> SegResNet:
    """A seeded random SegResNet of the tiny configs, its output biases shifted so that all labels occur."""
    torch.manual_seed(seed)
    net = SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=8, in_channels=4, out_channels=3)
    with torch.no_grad():
        net.conv_final[-1].conv.weight.mul_(4.0)
        net.conv_final[-1].conv.bias.copy_(torch.tensor(bias))
    atomic_save({"model": net.state_dict()}, ckpt)
    return net.eval()


@pytest.fixture
def two_folds(tmp_path: Path) -> tuple[Path, list[SegResNet]]:
    """bundle_root with models/fold0/model.pt and models/fold1/model.pt (and a models/model.pt the ensemble skips)."""
    root = tmp_path / "run"
    nets = [
        _segresnet(1, root / "models" / "fold0" / "model.pt", [0.5, 1.0, 0.0]),
        _segresnet(2, root / "models" / "fold1" / "model.pt", [-0.5, 0.0, -0.3]),
    ]
    _segresnet(3, root / "models" / "model.pt", [9.0, 9.0, 9.0])
    return root, nets


@pytest.mark.parametrize("edition, tta", [("2021", True), ("2023", False)])
def test_ensemble_of_two_checkpoints_is_their_mean_probability(
    data: dict[str, Path], two_folds: tuple[Path, list[SegResNet]], edition: str, tta: bool, tmp_path: Path
) -> None:
    """inference.json + inference_ensemble.json over models/fold0 and models/fold1: the probability is the mean of
    the two networks' sigmoid outputs (over the 8 flips by default; ``--tta false``: one pass each), computed here
    by hand with MONAI's sliding window, and the written NIfTI holds that mean thresholded at 0.5, in the edition's
    label values and the input's affine."""
    root, nets = two_folds
    flips = ALL_FLIPS if tta else [()]
    case = sorted(data[edition].iterdir())[0]
    out = tmp_path / "pred"
    wf = _workflow(
        _configs("inference.json", "inference_ensemble.json"),
        "infer",
        "run",
        dataset_dir=str(case),
        bundle_root=str(root),
        output_dir=str(out),
        **({} if tta else {"tta": False}),  # on by default
        **INFER,
        engine="torch",  # the fusion is checked against torch fp32 to 2e-5; OpenVINO f32 is within 1e-4 of it
    )
    image = wf.parser.get_parsed_content("preprocessing")(wf.parser.get_parsed_content("datalist")[0])["image"][None]
    window = SlidingWindowInferer(roi_size=INFER["val_roi_size"], sw_batch_size=1, overlap=0.5)
    x = image.as_tensor()
    with torch.no_grad():
        per_net = [
            sum(torch.sigmoid(torch.flip(window(torch.flip(x, f), n), f)) for f in flips) / len(flips) for n in nets
        ]
        expected = (per_net[0] + per_net[1]) / 2
        got = torch.sigmoid(wf.parser.get_parsed_content("ensemble_inferer")(image, None))
    torch.testing.assert_close(got.as_tensor(), expected, atol=2e-5, rtol=0)
    assert min(((p > 0.5) != (expected > 0.5)).float().mean().item() for p in per_net) > 0.01  # not one model alone

    wf.run()
    seg_file = out / f"{case.name}_seg.nii.gz"
    seg, ref = nib.load(seg_file), nib.load(wf.parser.get_parsed_content("datalist")[0]["image"][0])
    np.testing.assert_allclose(seg.affine, ref.affine)
    assert seg.shape == ref.shape
    conv = convention(edition)
    labels = np.asarray(seg.dataobj)
    want = conv.labels_from_regions((expected[0] > 0.5).numpy())
    sure = (expected[0] - 0.5).abs().min(dim=0).values.numpy() > 1e-4  # float noise can flip voxels at exactly 0.5
    np.testing.assert_array_equal(labels[sure], want[sure])
    assert set(np.unique(labels).tolist()) == set(conv.labels)  # 1/2/4 or 1/2/3, with background


def test_evaluate_ensemble_scores_what_inference_ensemble_writes(
    data: dict[str, Path], two_folds: tuple[Path, list[SegResNet]], tmp_path: Path
) -> None:
    """evaluate_ensemble.json scores the ensemble (official metrics of evaluate.json) on the fixed test split: its
    Dice is that of the inference_ensemble.json file scored independently; an ensemble of one checkpoint without
    TTA scores exactly what the plain evaluate.json scores for that fold."""
    root, _ = two_folds
    files = _configs("train.json", "evaluate.json", "evaluate_ensemble.json")
    ev = _workflow(
        files,
        "train",
        "evaluating",
        dataset_dir=str(data["2021"]),
        bundle_root=str(root),
        output_dir=str(tmp_path / "eval"),
        tta=False,  # one pass per model keeps this short; TTA is the same inferer's job
        **TINY,
    )
    ev.run()
    metrics = dict(line.split(",") for line in (tmp_path / "eval" / "metrics.csv").read_text().splitlines())
    test_case = load_split(data["2021"], "testing")[0]
    case_dir = Path(test_case["label"]).parent
    inf = _workflow(
        _configs("inference.json", "inference_ensemble.json"),
        "infer",
        "run",
        dataset_dir=str(case_dir),
        bundle_root=str(root),
        output_dir=str(tmp_path / "pred"),
        tta=False,
        **INFER,
    )
    inf.run()
    scores = score_brats_segmentations(
        [(tmp_path / "pred" / f"{case_dir.name}_seg.nii.gz", Path(test_case["label"]))], "2021"
    )
    for region in ("TC", "WT", "ET"):
        assert float(metrics[f"test_dice_{region}"]) == pytest.approx(scores[f"dice_{region}"], abs=1e-6), region
    assert 0.0 < float(metrics["test_dice"]) < 1.0

    one = {"ckpt_paths": [str(root / "models" / "fold1" / "model.pt")], "tta": False}
    ev1 = _workflow(
        files,
        "train",
        "evaluating",
        dataset_dir=str(data["2021"]),
        bundle_root=str(root),
        output_dir=str(tmp_path / "one"),
        **one,
        **TINY,
    )
    ev1.run()
    plain = _workflow(
        _configs("train.json", "evaluate.json"),
        "train",
        "evaluating",
        dataset_dir=str(data["2021"]),
        bundle_root=str(root),
        fold=1,
        num_folds=3,
        output_dir=str(tmp_path / "plain"),
        **TINY,
    )
    plain.run()
    one_metrics, plain_metrics = ((tmp_path / d / "metrics.csv").read_text() for d in ("one", "plain"))
    assert one_metrics == plain_metrics and one_metrics != (tmp_path / "eval" / "metrics.csv").read_text()


# ---------------------------------------------------------------- the U-Net override


def test_network_unet_trains_a_fold_and_infers(data: dict[str, Path], tmp_path: Path) -> None:
    """configs/network_unet.json (DynUNet) trains one tiny epoch of fold 1 of 3 into models/fold1/, and the plain
    and ensemble inference configs with the same override load it and write a segmentation."""
    root = tmp_path / "run"
    wf = _workflow(
        _configs("train.json", "demo.json", "network_unet.json"),
        "train",
        "training",
        dataset_dir=str(data["2021"]),
        bundle_root=str(root),
        fold=1,
        num_folds=3,
        **TINY,
    )
    assert isinstance(wf.parser.get_parsed_content("network_def"), DynUNet)
    wf.run()
    n_train = len(json.loads((root / "eval" / "fold1" / "datalist.json").read_text())["training"])
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == n_train  # 1 epoch, batch 1
    wf.finalize()
    assert (root / "models" / "fold1" / "model.pt").is_file() and not (root / "models" / "model.pt").exists()

    case = sorted(data["2023"].iterdir())[0]
    # the override layers in either order around demo.json and builds the same network for inference
    for names, run_id, out in (
        (("inference.json", "demo.json", "network_unet.json"), "run", "plain"),
        (("inference.json", "network_unet.json", "demo.json", "inference_ensemble.json"), "run", "ensemble"),
    ):
        over = {"ckpt_path": str(root / "models" / "fold1" / "model.pt")} if out == "plain" else {}
        inf = _workflow(
            _configs(*names),
            "infer",
            run_id,
            dataset_dir=str(case),
            bundle_root=str(root),
            output_dir=str(tmp_path / out),
            **over,
            **INFER,
        )
        assert isinstance(inf.parser.get_parsed_content("network_def"), DynUNet)
        inf.run()
        seg = nib.load(tmp_path / out / f"{case.name}_seg.nii.gz")
        assert seg.shape == SIZE and set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}
