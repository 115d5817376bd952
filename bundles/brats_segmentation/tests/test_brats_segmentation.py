"""brats_segmentation: prepare, label conventions, train/resume/evaluate/infer, multi-GPU (gloo) and bad inputs.

Tiny synthetic volumes (48x48x32) in the real 2021 and 2023 layouts, CPU only.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from benchmarks.scoring import score_brats_segmentations
from common.checkpoint import CheckpointError, atomic_save, latest_checkpoint, load_weights
from scripts.brats import (
    GLI2023,
    LEGACY,
    BratsInputError,
    LabelsToRegionsd,
    LoadBratsCased,
    RegionsToLabelsd,
    check_headers,
)
from scripts.prepare import find_cases, inference_items, prepare
from scripts.studies import stack_case
from scripts.synthetic import generate
from scripts.writers import SaveBratsSegd
from tests.helpers import bundle_workflow, inference_workflow

BUNDLE = Path(__file__).resolve().parents[1]
REPO = BUNDLE.parents[1]
SIZE = (48, 48, 32)
TINY = {
    "epochs": 1,
    "val_interval": 1,
    "init_filters": 8,
    "roi_size": [32, 32, 32],
    "val_roi_size": [48, 48, 32],
    "num_workers": 0,
    "learning_rate": 0.002,
}


def _configs(*names: str) -> list[str]:
    return [str(BUNDLE / "configs" / n) for n in names]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("brats")
    generate(root / "BraTS2021", n_cases=4, layout="2021", size=SIZE, seed=1)
    generate(root / "BraTS2023", n_cases=3, layout="2023", size=SIZE, seed=2)
    return {"2021": root / "BraTS2021", "2023": root / "BraTS2023", "root": root}


def _copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _workflow(config_files: list[str], workflow_type: str, run_id: str, **override) -> ConfigWorkflow:
    return bundle_workflow(BUNDLE, config_files, workflow_type, run_id, **override)


# ---------------------------------------------------------------- prepare and label conventions


@pytest.mark.parametrize("edition", ["2021", "2023"])
def test_prepare_detects_edition_and_splits(data: dict[str, Path], edition: str, tmp_path: Path) -> None:
    out = tmp_path / "datalist.json"
    datalist = prepare(data[edition], output=out, seed=7)
    assert datalist["edition"] == edition
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] in ([2, 1, 1], [1, 1, 1])
    cases = [i["case"] for k in ("training", "validation", "testing") for i in datalist[k]]
    assert len(cases) == len(set(cases)) == (4 if edition == "2021" else 3)
    assert json.loads(out.read_text()) == datalist
    assert prepare(data[edition], seed=7)["testing"] == datalist["testing"]  # seeded, reproducible
    item = datalist["training"][0]
    suffixes = ("t1ce", "t1", "t2", "flair") if edition == "2021" else ("t1c", "t1n", "t2w", "t2f")
    assert [Path(f).name.split(".")[0].rsplit("_" if edition == "2021" else "-", 1)[1] for f in item["image"]] == list(
        suffixes
    )
    assert item["label"].endswith("seg.nii.gz")


def test_prepare_accepts_2018_hgg_lgg_layout(data: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    for i, case_dir in enumerate(sorted(data["2021"].iterdir())):
        grade = "HGG" if i % 2 else "LGG"
        dst = root / grade / f"Brats18_TCIA01_{i:03d}_1"
        dst.mkdir(parents=True)
        for f in case_dir.iterdir():
            shutil.copy(f, dst / f.name.replace(case_dir.name, dst.name))
    items = find_cases(root)
    assert len(items) == 4 and {i["edition"] for i in items} == {"2018-2019"}


@pytest.mark.parametrize("edition", ["2021", "2023"])
def test_regions_follow_edition_labels(data: dict[str, Path], edition: str) -> None:
    item = find_cases(data[edition])[0]
    d = LabelsToRegionsd("label")(LoadBratsCased(["image", "label"])(item))
    seg = np.asarray(nib.load(item["label"]).dataobj)
    conv = LEGACY if edition == "2021" else GLI2023
    tc, wt, et = (d["label"][i].numpy() > 0 for i in range(3))
    assert d["image"].shape == (4, *SIZE) and d["label"].shape == (3, *SIZE)
    np.testing.assert_array_equal(et, seg == conv.enhancing)
    np.testing.assert_array_equal(wt, seg > 0)
    np.testing.assert_array_equal(tc, (seg == conv.necrosis) | (seg == conv.enhancing))
    # the label map written back from the regions is the original one, in the edition's values
    np.testing.assert_array_equal(conv.labels_from_regions(d["label"].numpy()), seg)


def test_synthetic_contrast_follows_mri(tmp_path: Path) -> None:
    """Edema bright on FLAIR, enhancing rim bright on T1c, necrosis dark on T1c; background 0: in the written files,
    at the demo's size (at this module's 48x48x32, 5 mm per voxel, few tumours have both a core and a rim)."""
    stats = {"t1ce": [], "flair": []}
    generate(tmp_path, n_cases=3, layout="2021", size=(96, 96, 64), seed=1)
    for item in find_cases(tmp_path):
        seg = np.asarray(nib.load(item["label"]).dataobj)
        t1c, flair = (np.asarray(nib.load(item["image"][i]).dataobj, np.float32) for i in (0, 3))
        brain = t1c > 0
        normal = brain & (seg == 0)
        assert (flair[~brain] == 0).all()
        if (seg == 1).sum() >= 30 and (seg == 4).sum() >= 30:
            stats["t1ce"].append((t1c[seg == 4].mean() / t1c[normal].mean(), t1c[seg == 1].mean() / t1c[normal].mean()))
        stats["flair"].append(flair[seg == 2].mean() / flair[normal].mean())
    assert stats["t1ce"] and all(rim > 1.2 and nec < 0.75 * rim for rim, nec in stats["t1ce"])
    assert all(ratio > 1.3 for ratio in stats["flair"])


# ---------------------------------------------------------------- bundle configs


def test_check_properties_and_net_in_out(data: dict[str, Path], tmp_path: Path) -> None:
    train = _workflow(
        _configs("train.json"), "train", "training", dataset_dir=str(data["2021"]), bundle_root=str(tmp_path), **TINY
    )
    assert train.check_properties() == []
    assert (tmp_path / "eval" / "datalist.json").is_file()
    case = sorted(data["2023"].iterdir())[0]
    infer = _workflow(
        _configs("inference.json"), "infer", "run", dataset_dir=str(case), bundle_root=str(tmp_path), init_filters=8
    )
    assert infer.check_properties() == []
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        config_file=str(BUNDLE / "configs" / "inference.json"),
        init_filters=8,
    )


@pytest.mark.slow
def test_train_resume_evaluate_infer(data: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "run"
    cfg = _configs("train.json", "demo.json")
    wf = _workflow(cfg, "train", "training", dataset_dir=str(data["2021"]), bundle_root=str(work), **TINY)
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2  # 2 training cases, batch 1
    assert (work / "models" / "model.pt").is_file()
    first = latest_checkpoint(work / "models")
    assert first is not None and first.name.endswith("epoch=1.pt")
    wf.finalize()

    # interrupted after epoch 1, restarted with resume: continues at epoch 2 with the saved optimizer state
    over = {**TINY, "epochs": 2, "resume": True}
    wf = _workflow(cfg, "train", "training", dataset_dir=str(data["2021"]), bundle_root=str(work), **over)
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4
    assert latest_checkpoint(work / "models").name.endswith("epoch=2.pt")
    wf.finalize()

    ev = _workflow(
        _configs("train.json", "evaluate.json", "demo.json"),
        "train",
        "evaluating",
        dataset_dir=str(data["2021"]),
        bundle_root=str(work),
        **TINY,
    )
    ev.run()
    lines = (work / "eval" / "metrics.csv").read_text().splitlines()
    metrics = {k: float(v) for k, v in (line.split(",") for line in lines)}
    for name in ("test_dice", "test_hd95", "test_dice_nan", "test_hd95_nan"):
        assert name in metrics
        for region in ("TC", "WT", "ET"):
            assert f"{name}_{region}" in metrics
    assert (work / "eval" / "test_dice_raw.csv").is_file()
    # the evaluation's Dice is the Dice of what inference writes for the test case, scored independently
    # (benchmarks/scoring.py: label values of the edition, BraTS empty-case rule) against the raw seg file
    test_case = json.loads((work / "eval" / "datalist.json").read_text())["testing"][0]
    case_dir = Path(test_case["label"]).parent
    # demo-trained weights run with the documented inference command plus configs/demo.json, no other flag
    inf = _workflow(
        _configs("inference.json", "demo.json"),
        "infer",
        "run",
        dataset_dir=str(case_dir),
        bundle_root=str(work),
        output_dir=str(tmp_path / "pred"),
        val_roi_size=TINY["val_roi_size"],
    )
    inf.run()
    written = tmp_path / "pred" / f"{case_dir.name}_seg.nii.gz"
    scores = score_brats_segmentations([(written, Path(test_case["label"]))], "2021")
    for region in ("TC", "WT", "ET"):
        assert metrics[f"test_dice_{region}"] == pytest.approx(scores[f"dice_{region}"], abs=1e-6), region
    assert metrics["test_dice"] == pytest.approx(np.mean([scores[f"dice_{r}"] for r in ("TC", "WT", "ET")]))

    # inference on a 2023 case (labels 1/2/3) with a model trained on 2021 labels (1/2/4)
    for edition, allowed in (("2023", {0, 1, 2, 3}), ("2021", {0, 1, 2, 4})):
        case = sorted(data[edition].iterdir())[0]
        out = tmp_path / f"pred{edition}"
        inf = _workflow(
            _configs("inference.json", "demo.json"),
            "infer",
            "run",
            dataset_dir=str(case),
            bundle_root=str(work),
            output_dir=str(out),
            val_roi_size=[48, 48, 32],
            overlay=True,
        )
        inf.run()
        seg_file = out / f"{case.name}_seg.nii.gz"
        seg, ref = nib.load(seg_file), nib.load(next(case.glob("*t1c*.nii.gz")))
        np.testing.assert_allclose(seg.affine, ref.affine)
        assert seg.shape == ref.shape and seg.header.get_qform(coded=True)[1] == ref.header.get_qform(coded=True)[1]
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= allowed
        assert (out / f"{case.name}_overlay.png").stat().st_size > 1000


@pytest.mark.parametrize("edition", ["2021", "2023"])
def test_written_labels_use_the_edition_values(data: dict[str, Path], edition: str, tmp_path: Path) -> None:
    item = inference_items(sorted(data[edition].iterdir())[0])[0]
    d = LoadBratsCased("image")(item)
    regions = torch.zeros((3, *SIZE))
    regions[1, 10:30, 10:30, 10:20] = 1  # WT
    regions[0, 15:25, 15:25, 12:18] = 1  # TC
    regions[2, 15:25, 15:25, 12:18] = 1  # ET
    regions[2, 18:22, 18:22, 14:16] = 0  # necrosis inside
    SaveBratsSegd("pred", tmp_path)(RegionsToLabelsd("pred")({**d, "pred": regions}))
    seg = np.asarray(nib.load(tmp_path / f"{item['case']}_seg.nii.gz").dataobj)
    et = 4 if edition == "2021" else 3
    assert set(np.unique(seg).tolist()) == {0, 1, 2, et}
    assert seg[20, 20, 15] == 1 and seg[16, 16, 13] == et and seg[12, 12, 11] == 2 and seg[0, 0, 0] == 0


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 cases: 6 training and 2 validation cases, so that each of 2 ranks has its own validation case (the
    validation sampler does not pad with duplicates, which would bias the metric)."""
    root = tmp_path_factory.mktemp("brats_ddp") / "BraTS2021"
    generate(root, n_cases=10, layout="2021", size=SIZE, seed=3)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("nnodes", [1, 2])
def test_multi_gpu_train_torchrun_gloo(ddp_data: Path, tmp_path: Path, torchrun, nnodes: int) -> None:
    """2 processes on gloo, on one node or as two single-process nodes (RANK 1 with LOCAL_RANK 0): each rank
    trains on its half of the training cases, rank 0 alone saves the unwrapped weights and the epoch checkpoint."""
    work = tmp_path / "ddp"
    args = ["training", "--config_file", "['configs/train.json','configs/multi_gpu_train.json','configs/demo.json']"]
    args += ["--dataset_dir", str(ddp_data), "--bundle_root", str(work)]
    for k, v in TINY.items():
        args += [f"--{k}", json.dumps(v)]
    launch = torchrun(BUNDLE, args, nnodes=nnodes, nproc_per_node=2 // nnodes)
    ranks = launch.check_ranks(nnodes, 2 // nnodes)
    n_train = len(json.loads((work / "eval" / "datalist.json").read_text())["training"])
    assert [ranks[r]["iterations"] for r in (0, 1)] == [str(-(-n_train // 2))] * 2, ranks  # batch 1, 1 epoch
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "info"} and not any(
        k.startswith("module.") for k in state["model"]
    )  # saved unwrapped, loadable by MONAI Label
    assert latest_checkpoint(work / "models") is not None


# ---------------------------------------------------------------- bad inputs


def _case_copy(data: dict[str, Path], tmp_path: Path, edition: str = "2021") -> tuple[Path, dict]:
    case = sorted(data[edition].iterdir())[0]
    dst = tmp_path / "ds" / case.name
    shutil.copytree(case, dst)
    return dst, find_cases(tmp_path / "ds")[0]


def test_missing_modality_is_named(data: dict[str, Path], tmp_path: Path) -> None:
    case, _ = _case_copy(data, tmp_path)
    next(case.glob("*_flair.nii.gz")).unlink()
    with pytest.raises(BratsInputError, match=rf"{case.name}.*missing flair"):
        find_cases(tmp_path / "ds")


def test_shape_and_affine_mismatch_are_named(data: dict[str, Path], tmp_path: Path) -> None:
    case, item = _case_copy(data, tmp_path)
    t2 = Path(item["image"][2])
    img = nib.load(t2)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-8], img.affine, img.header), t2)
    with pytest.raises(BratsInputError, match=rf"{t2.name}: shape"):
        prepare(tmp_path / "ds")
    flair = Path(item["image"][3])
    shutil.copy(item["image"][0], t2)
    img = nib.load(flair)
    affine = img.affine.copy()
    affine[0, 3] += 5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), flair)
    with pytest.raises(BratsInputError, match=rf"{flair.name}: affine differs"):
        LoadBratsCased(["image", "label"])(item)


def test_truncated_and_nan_files_are_named(data: dict[str, Path], tmp_path: Path) -> None:
    case, item = _case_copy(data, tmp_path)
    t1 = Path(item["image"][1])
    raw = t1.read_bytes()
    t1.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BratsInputError, match=rf"{t1.name}"):
        LoadBratsCased(["image", "label"])(item)
    t1.write_bytes(raw)
    flair = Path(item["image"][3])
    img = nib.load(flair)
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), flair)
    with pytest.raises(BratsInputError, match=rf"{flair.name}: 1 voxels are NaN or Inf"):
        LoadBratsCased(["image", "label"])(item)


def test_unexpected_label_values_are_named(data: dict[str, Path], tmp_path: Path) -> None:
    case, item = _case_copy(data, tmp_path)
    seg_file = Path(item["label"])
    img = nib.load(seg_file)
    seg = np.asarray(img.dataobj).copy()
    seg[seg == 4] = 3  # 2023 values in a 2021 case
    seg[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(seg, img.affine, img.header), seg_file)
    with pytest.raises(BratsInputError, match=rf"{seg_file.name}: unexpected label values \[3\]"):
        LabelsToRegionsd("label")(LoadBratsCased(["image", "label"])(item))


def test_empty_folder_and_decathlon_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BratsInputError, match="no BraTS cases found"):
        prepare(tmp_path / "empty")
    task = tmp_path / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    (task / "dataset.json").write_text("{}")
    with pytest.raises(BratsInputError, match="Decathlon"):
        prepare(task)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 4), np.float32), np.eye(4)), tmp_path / "BRATS_001_flair.nii.gz")
    with pytest.raises(BratsInputError, match="BRATS_001_flair.nii.gz: expected a 3D volume.*4D"):
        check_headers([tmp_path / "BRATS_001_flair.nii.gz"])


def test_checkpoint_of_another_network_is_refused(tmp_path: Path) -> None:
    from monai.networks.nets import SegResNet, UNet

    other = tmp_path / "unet.pt"
    unet = UNet(3, 4, 3, channels=(4, 8), strides=(2,))
    atomic_save({"model": unet.state_dict()}, other)
    net = SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=8, in_channels=4, out_channels=3)
    with pytest.raises(CheckpointError, match=rf"{other.name}: weights do not fit this SegResNet"):
        load_weights(net, other)


def test_bad_input_leaves_no_output(data: dict[str, Path], tmp_path: Path) -> None:
    case, item = _case_copy(data, tmp_path)
    ckpt = tmp_path / "models" / "model.pt"
    from monai.networks.nets import SegResNet

    net = SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=8, in_channels=4, out_channels=3)
    atomic_save({"model": net.state_dict()}, ckpt)
    t1c = Path(item["image"][0])
    with gzip.open(t1c, "rb") as f:
        raw = f.read()
    with gzip.open(t1c, "wb") as f:
        f.write(raw[: len(raw) - 5000])  # valid gzip, truncated NIfTI data
    out = tmp_path / "pred"
    inf = inference_workflow(BUNDLE, ["inference.json"], case, out, tmp_path, init_filters=8, val_roi_size=[48, 48, 32])
    with pytest.raises(Exception) as excinfo:
        inf.run()
    chain, e = [], excinfo.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any(t1c.name in m and "cannot read the NIfTI data" in m for m in chain), chain
    assert not out.exists() or not any(out.iterdir())


def test_inference_items_from_files_folder_or_root(data: dict[str, Path]) -> None:
    case = sorted(data["2023"].iterdir())[1]
    files = sorted(case.glob("*-t*.nii.gz"), reverse=True)  # any order: recognised by suffix
    item = inference_items(".", files)[0]
    assert item["case"] == case.name and item["edition"] == "2023" and "label" not in item
    assert [Path(f).name for f in item["image"]] == [f"{case.name}-{s}.nii.gz" for s in ("t1c", "t1n", "t2w", "t2f")]
    assert inference_items(case) == [item]
    assert [i["case"] for i in inference_items(data["2023"])] == sorted(p.name for p in data["2023"].iterdir())
    with pytest.raises(BratsInputError, match="missing modality t2f"):
        inference_items(".", files[1:] if "t2f" in files[0].name else [f for f in files if "t2f" not in f.name])


# ---------------------------------------------------------------- one 4-channel file (MONAI Label's study format)


def test_single_four_channel_file_loads_like_the_four_files(data: dict[str, Path], tmp_path: Path) -> None:
    case = sorted(data["2023"].iterdir())[0]
    stacked = stack_case(case, tmp_path / "study.nii.gz")
    from_files = LoadBratsCased("image")(inference_items(case)[0])["image"]
    for value in (str(stacked), [str(stacked)]):  # MONAI Label passes a bare path
        item = inference_items(str(stacked))[0] if isinstance(value, str) else {"image": value}
        assert item["image"] == str(stacked) or item["image"] == [str(stacked)]
        image = LoadBratsCased("image")(item)["image"]
        assert tuple(image.shape) == (4, *SIZE)
        torch.testing.assert_close(image.as_tensor(), from_files.as_tensor())
        np.testing.assert_allclose(np.asarray(image.affine), np.asarray(from_files.affine), atol=1e-5)
    # a seg beside it must share the geometry
    seg = stack_case(case, tmp_path / "study2.nii.gz", label_output=tmp_path / "labels" / "study2.nii.gz")
    d = LoadBratsCased(["image", "label"])({"image": str(seg), "label": str(tmp_path / "labels" / "study2.nii.gz")})
    assert tuple(d["label"].shape) == (1, *SIZE)
    np.testing.assert_array_equal(d["label"][0].numpy(), np.asarray(nib.load(next(case.glob("*seg.nii.gz"))).dataobj))


def test_single_file_with_wrong_channels_or_decathlon_name_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    case = sorted(data["2021"].iterdir())[0]
    three = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((*SIZE, 3), np.float32), np.eye(4)), str(three))
    with pytest.raises(BratsInputError, match=r"three\.nii\.gz.*4D NIfTI \(x, y, z, 4\)"):
        LoadBratsCased("image")({"image": str(three)})
    decathlon = stack_case(case, tmp_path / "BRATS_001.nii.gz")
    with pytest.raises(BratsInputError, match="BRATS_001.nii.gz.*Decathlon"):
        inference_items(str(decathlon))
    small_seg = tmp_path / "small_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(small_seg))
    study = stack_case(case, tmp_path / "study.nii.gz")
    with pytest.raises(BratsInputError, match=r"small_seg\.nii\.gz: shape \(8, 8, 8\) differs from study\.nii\.gz"):
        LoadBratsCased(["image", "label"])({"image": str(study), "label": str(small_seg)})
    with pytest.raises(BratsInputError, match="got 2"):
        LoadBratsCased("image")({"image": [str(three), str(three)]})


@pytest.mark.parametrize("edition", ["2021", "2023"])
def test_inference_on_single_file_writes_default_edition_labels(
    data: dict[str, Path], edition: str, tmp_path: Path
) -> None:
    """A single-file study has no edition: the config's default_edition decides the written label values."""
    case = sorted(data["2021"].iterdir())[0]
    stacked = stack_case(case, tmp_path / "study.nii.gz")
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    inf = inference_workflow(BUNDLE, ["inference.json"], stacked, tmp_path / "out", tmp_path, ckpt_path=str(ckpt),
                             init_filters=8, val_roi_size=[48, 48, 32], default_edition=edition)  # fmt: skip
    net = inf.parser.get_parsed_content("network_def")
    with torch.no_grad():  # a network whose biases make every region positive: all three labels get written
        net.conv_final[-1].conv.bias.fill_(5.0)
        net.conv_final[-1].conv.weight.zero_()
        net.conv_final[-1].conv.bias[2] = -5.0  # no ET anywhere: TC -> necrosis everywhere
    atomic_save({"model": net.state_dict()}, ckpt)
    inf.run()
    seg = nib.load(tmp_path / "out" / "study_seg.nii.gz")
    ref = nib.load(stacked)
    assert seg.shape == SIZE
    np.testing.assert_allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) == {1}
    # and ET everywhere gives the edition's enhancing value
    with torch.no_grad():
        net.conv_final[-1].conv.bias[2] = 5.0
    atomic_save({"model": net.state_dict()}, ckpt)
    inf.run()
    seg = np.asarray(nib.load(tmp_path / "out" / "study_seg.nii.gz").dataobj)
    assert set(np.unique(seg).tolist()) == {4 if edition == "2021" else 3}


# ---------------------------------------------------------------- reproducibility (the benchmark's premise)


def test_same_seed_same_weights_and_metrics(data: dict[str, Path], tmp_path: Path) -> None:
    """Two trainings with the same seed on the same machine give bit-identical weights and validation Dice."""
    runs = []
    for name in ("a", "b"):
        work = tmp_path / name
        wf = _workflow(
            _configs("train.json", "demo.json"), "train", "training", dataset_dir=str(data["2021"]),
            bundle_root=str(work), **TINY,
        )  # fmt: skip
        wf.run()
        metric = wf.parser.get_parsed_content("validate#evaluator").state.metrics["val_dice"]
        wf.finalize()
        runs.append((torch.load(work / "models" / "model.pt", weights_only=True)["model"], metric))
    (w1, m1), (w2, m2) = runs
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert m1 == m2
