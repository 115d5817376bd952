"""`--tracking mlflow`: MONAI's MLflow settings attach to every bundle's trainer and validator and log to a
local folder; one tiny CXR14 training (the fastest bundle) is read back with MLflow's client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.tracking import close_mlflow_runs, file_store_uri
from tests.helpers import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
CXR14 = BUNDLES / "cxr14_classification"


@pytest.mark.parametrize("bundle", sorted(p.parents[1].name for p in BUNDLES.glob("*/configs/train.json")))
def test_configs_have_the_ids_monai_tracking_patches(bundle):
    """DEFAULT_MLFLOW_SETTINGS appends to the *lists* ``train#handlers``/``validate#handlers`` (a missing list
    would replace the engine's handlers) and uses our ``tracking_uri``; TensorBoard stays the default logger."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    configs = BUNDLES / bundle / "configs"
    for files in (["train.json"], ["train.json", "evaluate.json"]):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        for key in ("trainer", "validator"):
            ids = DEFAULT_MLFLOW_SETTINGS["handlers_id"][key]
            assert parser.get(ids["id"]) is not None, (files, ids["id"])
            assert isinstance(parser.get(ids["handlers"]), list), (files, ids["handlers"])
        assert "common.tracking.file_store_uri" in parser.get("tracking_uri")
    train = json.loads((configs / "train.json").read_text())
    targets = [h.get("_target_") for h in train["train"]["handlers"] if isinstance(h, dict)]
    assert "TensorBoardStatsHandler" in targets


def test_file_store_uri_opts_in(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = file_store_uri(tmp_path / "mlruns")
    assert uri == (tmp_path / "mlruns").resolve().as_uri()
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")  # an explicit choice is kept
    file_store_uri(tmp_path)
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "false"


def test_close_mlflow_runs_finishes_the_evaluation_run(tmp_path, monkeypatch):
    import mlflow
    from monai.handlers import MLFlowHandler

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    handler = MLFlowHandler(tracking_uri=file_store_uri(tmp_path / "mlruns"), iteration_log=False)
    handler.start(SimpleNamespace(state=SimpleNamespace(max_epochs=1, epoch_length=1)))
    run_id = handler.cur_run.info.run_id
    assert close_mlflow_runs([object(), handler]) == 1
    assert close_mlflow_runs([handler]) == 0 and close_mlflow_runs(None) == 0
    status = mlflow.MlflowClient(file_store_uri(tmp_path / "mlruns")).get_run(run_id).info.status
    assert status == "FINISHED"


def test_cxr14_training_logs_to_local_mlruns(tmp_path):
    """1 epoch of 2 iterations on 14 synthetic patients (64 px) with ``--tracking mlflow``; the run's metrics
    (train loss per iteration, validation AUROC per epoch) are read back from ``<bundle_root>/eval/mlruns``."""
    import mlflow

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), BUNDLES_PROGRESS="0")
    data, out = tmp_path / "data", tmp_path / "run"
    gen = f"from scripts.synthetic import generate; generate({str(data)!r}, n_patients=14, size=64, seed=5, n_dicom=0)"
    cmd = [sys.executable, "-c", gen]
    proc = subprocess.run(cmd, cwd=CXR14, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training"]
    cmd += ["--config_file", "['configs/train.json','configs/demo.json']", "--tracking", "mlflow"]
    cmd += ["--dataset_dir", str(data), "--bundle_root", str(out)]
    cmd += ["--image_size", "64", "--num_workers", "0", "--batch_size", "8", "--max_epochs", "1"]
    cmd += ["--val_fraction", "0.25"]
    proc = subprocess.run(cmd, cwd=CXR14, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr[-3000:]

    store = out / "eval" / "mlruns"
    assert store.is_dir()
    client = mlflow.MlflowClient(file_store_uri(store))
    experiment = client.get_experiment_by_name("monai_experiment")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # trainer and validator share one run
    run = runs[0]
    assert run.info.status == "FINISHED"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses), losses
    # the validation AUROC MLflow holds is the one the run itself logged (StatsHandler, 4 decimals)
    logged = re.findall(r"val_mean_auroc: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert logged, proc.stderr[-2000:]
    assert run.data.metrics["val_mean_auroc"] == pytest.approx(float(logged[-1]), abs=5e-5)
    assert run.data.params["max_epochs"] == "1"
    # MONAI also stores the executed config as an artifact of the run; TensorBoard still writes its events
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts
    assert list((out / "eval" / "tb").glob("events.out.tfevents.*"))
