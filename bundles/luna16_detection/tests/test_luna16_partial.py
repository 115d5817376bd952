"""A partial LUNA16 download (subset0 alone, what most people fetch first): ``prepare`` writes the evaluation
datalist and names the found and missing subsets in one line; a root it can write nothing for is a non-zero exit
naming the folder; a training fold with a missing subset fails naming it; ``evaluating`` scores a model on the
subsets chosen with ``--eval_subsets``, on a root without any training split."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scoring import luna16_froc, read_findings, read_submission
from scripts.synthetic import generate
from tests.helpers import HANG_GUARD

BUNDLE = Path(__file__).resolve().parents[1]
REPO = BUNDLE.parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], timeout: int = HANG_GUARD) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=BUNDLE, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _prepare(root: Path, out: Path) -> subprocess.CompletedProcess:
    return _run(["-m", "scripts.prepare", "--dataset_dir", str(root), "--out_dir", str(out)])


@pytest.fixture(scope="module")
def full_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 scans, 3 per subset; subset0 holds scans with nodules, excluded findings and one without nodules."""
    return generate(tmp_path_factory.mktemp("full"), n_scans=30, size=(48, 48, 24), empty_fraction=0.3, seed=14)


@pytest.fixture(scope="module")
def subset0_root(full_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a user has after downloading subset0 and the annotation files: subset0 only, annotations.csv for all
    888 scans (here 30), annotations_excluded.csv, and the challenge's other CSVs beside them."""
    root = tmp_path_factory.mktemp("partial") / "LUNA16"
    shutil.copytree(full_root / "subset0", root / "subset0")
    for name in ("annotations.csv", "annotations_excluded.csv"):
        shutil.copyfile(full_root / name, root / name)
    uids = sorted(m.stem for m in full_root.glob("subset*/*.mhd"))
    (root / "seriesuids.csv").write_text("".join(f"{u}\n" for u in uids))
    (root / "candidates_V2.csv").write_text("seriesuid,coordX,coordY,coordZ,class\n" + f"{uids[0]},1,2,3,0\n")
    return root


def _subset0(root: Path) -> list[str]:
    return sorted(m.stem for m in (root / "subset0").glob("*.mhd"))


def _annotations(path: Path) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["seriesuid"], []).append(
                [float(row[k]) for k in ("coordX", "coordY", "coordZ", "diameter_mm")]
            )
    return out


def test_prepare_partial_root_writes_the_evaluation_datalist(subset0_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    proc = _prepare(subset0_root, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(out / "datalist_eval.json")]  # no fold can train on subset0 alone
    dl = json.loads((out / "datalist_eval.json").read_text())
    assert dl["subsets"] == [0] and "world mm" in dl["coordinates"]
    assert sorted(i["seriesuid"] for i in dl["test"]) == _subset0(subset0_root) and len(dl["test"]) == 3
    nodules = _annotations(subset0_root / "annotations.csv")
    excluded = _annotations(subset0_root / "annotations_excluded.csv")
    for item in dl["test"]:  # the CSV values, read here independently
        assert item["subset"] == 0 and Path(item["image"]).parent == (subset0_root / "subset0").resolve()
        assert item["nodules"] == nodules.get(item["seriesuid"], [])
        assert item["excluded"] == excluded.get(item["seriesuid"], [])
    # one line names what was found and what is missing (not a warning per fold or per seriesuid)
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, proc.stderr
    assert f"LUNA16 at {subset0_root}: found subset0 (3 scans); missing subset1..subset9" in warnings[0]


@pytest.mark.parametrize(
    "layout, problem",
    [
        ("nothing", "no subset0..subset9 folder"),
        ("empty_subsets", "no .mhd scans in subset0, subset3"),
        ("no_annotations", "annotations.csv: annotation file not found"),
        ("not_there", "dataset directory not found"),
    ],
)
def test_prepare_with_nothing_to_write_exits_nonzero(
    subset0_root: Path, tmp_path: Path, layout: str, problem: str
) -> None:
    root = tmp_path / "LUNA16"
    if layout == "empty_subsets":
        (root / "subset0").mkdir(parents=True)
        (root / "subset3").mkdir()
        shutil.copyfile(subset0_root / "annotations.csv", root / "annotations.csv")
    elif layout == "no_annotations":
        shutil.copytree(subset0_root / "subset0", root / "subset0")
    elif layout == "nothing":
        root.mkdir()
    proc = _prepare(root, tmp_path / "data")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr  # a message, not a stack trace
    message = proc.stderr.strip().splitlines()[-1]
    assert str(root) in message and problem in message and "no datalist written" in message, message
    assert not list((tmp_path / "data").glob("*.json")) if (tmp_path / "data").exists() else True


def test_training_fold_needs_its_subsets(full_root: Path, subset0_root: Path, tmp_path: Path, caplog) -> None:
    # the scripts package imported now (other bundles' tests re-import it): its error class is the one raised
    from scripts.prepare import LunaDataError, eval_datalist, fold_datalist, write_datalists

    # subset0 alone: fold 0 validates on subset1 and trains on subset2..9, all missing
    with pytest.raises(LunaDataError) as e:
        fold_datalist(subset0_root, fold=0)
    message = str(e.value)
    assert message.startswith(f"{subset0_root}: fold 0 cannot train: it trains on subset2..subset9 and validates")
    assert "subset1..subset9 are missing (found subset0). Download subset1..subset9 of LUNA16" in message
    assert message.endswith('--eval_subsets "[0]"')
    # one training subset missing: an error naming it, not a fold silently trained on 7 subsets
    root = tmp_path / "no5"
    shutil.copytree(full_root, root)
    shutil.rmtree(root / "subset5")
    with pytest.raises(LunaDataError, match=r"fold 0 cannot train: .* but subset5 is missing \(found subset0"):
        fold_datalist(root, fold=0)
    # only the fold whose test subset is the missing one can still train; the found subsets can be evaluated
    assert [p.name for p in write_datalists(root, tmp_path / "data")] == ["datalist_fold5.json", "datalist_eval.json"]
    dl = fold_datalist(root, fold=5)
    assert dl["test"] == [] and {i["subset"] for i in dl["training"]} == {0, 1, 2, 3, 4, 7, 8, 9}

    with pytest.raises(LunaDataError, match=r"subset5 requested but not found \(found subset0..subset4, subset6"):
        eval_datalist(root, [4, 5])
    with caplog.at_level(logging.WARNING):  # a subset the model's fold trained on: not a held-out score
        assert [i["subset"] for i in eval_datalist(root, 4, fold=0)["test"]] == [4, 4, 4]
    assert "fold 0 uses (subset4 in its training split): not a held-out score" in caplog.text


def test_evaluate_on_eval_subsets_of_a_partial_root(subset0_root: Path, tmp_path: Path) -> None:
    """The documented command on a root holding subset0 and the annotation files only, with a seeded small
    network whose detections cover every scan: the FROC scores exactly subset0's scans, and its CPM equals the
    one recomputed by independent code (benchmarks/scoring.py) from the predictions and the raw CSV files."""
    import torch
    from monai.bundle import ConfigParser

    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in ("train.json", "demo.json")])
    torch.manual_seed(0)
    state = parser.get_parsed_content("network_def").state_dict()
    state["classification_head.cls_logits.bias"].zero_()  # scores near 0.5: detections in every scan
    torch.save({"model": state}, bundle / "models" / "model.pt")
    args = ["-m", "monai.bundle", "run", "evaluating"]
    args += ["--config_file", "['configs/train.json','configs/evaluate.json','configs/demo.json']"]
    args += ["--dataset_dir", str(subset0_root), "--eval_subsets", "[0]", "--bundle_root", str(bundle)]
    args += ["--validate#key_metric#test_cpm#n_bootstrap", "20"]
    proc = _run(args)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    scans = _subset0(subset0_root)
    froc = json.loads((bundle / "eval" / "froc.json").read_text())
    predictions = read_submission(bundle / "eval" / "predictions.csv")
    assert sorted(predictions) == scans and froc["n_scans"] == len(scans)  # exactly subset0's series scored
    nodules = read_findings(subset0_root / "annotations.csv")
    excluded = read_findings(subset0_root / "annotations_excluded.csv")
    assert froc["n_nodules"] == sum(len(nodules.get(u, [])) for u in scans) > 0
    assert any(excluded.get(u) for u in scans) and any(not nodules.get(u) for u in scans)
    oracle = luna16_froc(predictions, nodules, excluded, scans)
    assert froc["cpm"] == pytest.approx(oracle["cpm"], abs=1e-9)
    for key in ("n_detected_nodules", "n_false_positives", "max_sensitivity"):
        assert froc[key] == pytest.approx(oracle[key]), key
    for rate, sensitivity in froc["sensitivity_at_fp_rates"].items():
        assert sensitivity == pytest.approx(oracle[f"sensitivity@{float(rate)}fp"], abs=1e-9), rate
    assert oracle["n_false_positives"] > 0
