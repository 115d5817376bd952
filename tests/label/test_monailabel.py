"""MONAI Label 0.8.5 serves the three bundles: app assembled by tools/label_app.py, /info/, /infer/, /train/ over HTTP.

Needs the MONAI Label environment (monailabel 0.8.5, monai 1.5.2, torch 2.14.1, pydicom<3, itk-io):

    make label-test        (builds .venv-label from requirements-label.txt on first use)

Not part of the default suite (marker ``label``); skipped when ``monailabel`` is not importable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.label

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = "luna16_detection"
BRATS = "brats_segmentation"
CXR = "cxr14_classification"
BUNDLES = (BRATS, CXR, BUNDLE)
STARTUP_TIMEOUT = 900  # app build (synthetic studies, random weights) plus server start, on a busy machine
INFER_TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post_json(url: str, payload: dict, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post_multipart(url: str, fields: dict[str, str], timeout: float) -> tuple[int, bytes]:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        )
        + f"--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:  # keep the server's error text for the assertion message
        return e.code, e.read()


# Seeded weights of the network a demo run trains (inference.json + demo.json), saved where `make demo` saves them
# (work_dirs/demo/<bundle>/models/model.pt), run in the bundle directory with the repository's `common` on the path.
_DEMO_WEIGHTS = """
import sys, torch
from monai.bundle import ConfigParser
sys.path[:0] = ['.', sys.argv[2]]
p = ConfigParser()
p.read_config(['configs/inference.json', 'configs/demo.json'])
p.get_parsed_content('imports')
torch.manual_seed(int(sys.argv[4]))
net = p.get_parsed_content('network_def', instantiate=True)
torch.save({'model': net.state_dict(), 'info': {'bundle': sys.argv[3]}}, sys.argv[1])
"""


def _demo_run(folder: Path, folds: int = 0) -> Path:
    """A folder laid out as `make demo` leaves work_dirs/demo, with seeded demo-network weights per bundle; with
    ``folds``, also ``models/fold{k}/model.pt`` as `--fold k` trainings leave them, fold k seeded with k: fold 0 is
    ``model.pt`` again, whose LUNA16 scores clear the detector's 0.02 threshold on the study (seeds 1 and 2 score at
    most 0.019 there, so an ensemble of them rightly returns no box)."""
    for name in BUNDLES:
        for sub, seed in [("", 0)] + [(f"fold{k}", k) for k in range(folds)]:
            target = folder / name / "models" / sub / "model.pt"
            target.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-c", _DEMO_WEIGHTS, str(target), str(ROOT), name, str(seed)]
            subprocess.run(cmd, cwd=ROOT / "bundles" / name, check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module", params=["bundle_weights", "demo_weights", "demo_ensemble"])
def server(request, tmp_path_factory):
    """`make label` as the README gives it: the bundles' own weights, then `LABEL_WEIGHTS=<a demo run>` (the demo's
    smaller networks, which the app must build from configs/demo.json to serve them), then that with two fold
    checkpoints and `LABEL_ENSEMBLE=1` (the fold ensemble with TTA of configs/inference_ensemble.json)."""
    pytest.importorskip("monailabel", reason="MONAI Label environment needed (see module docstring)")
    out = tmp_path_factory.mktemp("label")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    port = _free_port()
    # exactly the README's `make label`, with a RELATIVE folder as its default work_dirs/label is (a relative
    # --out once broke the app build and the BraTS study paths while an absolute one passed)
    make = ["make", "--no-print-directory", "label", f"LABEL_DIR={os.path.relpath(out, ROOT)}", f"LABEL_PORT={port}"]
    make += [f"LABEL_BUNDLES={','.join(BUNDLES)}", f"PYTHON={sys.executable}", f"LABEL_VENV={Path(sys.prefix)}"]
    demo = None
    if request.param in ("demo_weights", "demo_ensemble"):
        demo = _demo_run(tmp_path_factory.mktemp("demo"), folds=2 if request.param == "demo_ensemble" else 0)
        make.append(f"LABEL_WEIGHTS={os.path.relpath(demo, ROOT)}")
    if request.param == "demo_ensemble":
        make.append("LABEL_ENSEMBLE=1")
    log = open(out / "server.log", "w")  # noqa: SIM115 - closed in teardown
    t0 = time.perf_counter()
    proc = subprocess.Popen(make, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{(out / 'server.log').read_text()[-4000:]}")
            try:
                info = _get(f"{url}/info/", timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"server not up after {STARTUP_TIMEOUT} s:\n{(out / 'server.log').read_text()[-4000:]}")
                time.sleep(2)
        print(f"make label ({request.param}): app built and server up after {time.perf_counter() - t0:.0f} s")
        report = json.loads((out / "label_app.json").read_text())
        if request.param == "demo_weights":  # served as trained, not refused and replaced by random weights
            assert all(report[name]["weights"].startswith("trained (") for name in BUNDLES), report
        if request.param == "demo_ensemble":
            for name in BUNDLES:
                assert report[name]["ensemble"]["folds"] == ["models/fold0/model.pt", "models/fold1/model.pt"], report
        yield {"url": url, "info": info, "out": out, "mode": request.param, "demo": demo}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_info_lists_every_bundle_with_its_task_type(server) -> None:
    models = server["info"]["models"]
    expected = {BRATS: ("segmentation", 3), CXR: ("classification", 2), BUNDLE: ("detection", 3)}
    for name, (task, dim) in expected.items():
        assert name in models, server["info"]
        assert models[name]["type"] == task, models[name]
        assert models[name]["dimension"] == dim, models[name]
        meta = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
        assert models[name]["version"] == meta["version"]
    assert models[BUNDLE]["labels"] == {"nodule": 0}
    # BraTS: the values of the label map /infer/ returns (2021 edition, the inference config's default), not the
    # network's TC/WT/ET channel indices 0/1/2
    assert models[BRATS]["labels"] == {"necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 4}
    assert len(models[CXR]["labels"]) == 14 and "effusion" in models[CXR]["labels"]  # MONAI Label lowercases
    assert BRATS in server["info"]["trainers"], server["info"].get("trainers")
    # one study per bundle, BraTS two (labelled, for /train/)
    assert server["info"]["datastore"]["total"] == 4
    assert server["info"]["datastore"]["completed"] == 2


def test_infer_returns_world_mm_boxes(server) -> None:
    t0 = time.perf_counter()
    status, body = _post_multipart(
        f"{server['url']}/infer/{BUNDLE}?image={BUNDLE}_case&output=json", {"params": "{}"}, timeout=INFER_TIMEOUT
    )
    seconds = time.perf_counter() - t0
    log = (server["out"] / "server.log").read_text()[-4000:]
    assert status == 200, f"HTTP {status}: {body[:2000]!r}\n{log}"
    res = json.loads(body)
    assert res["model"] == BUNDLE
    assert res["label_names"] == {"nodule": 0}
    boxes, labels = res["box"], res["label"]
    assert len(boxes) == len(labels)
    # seeded random weights score everything near the prior, so boxes are expected; each is centre+size (6 numbers)
    assert len(boxes) > 0, res
    assert all(len(b) == 6 for b in boxes)
    assert all(lab == 0 for lab in labels)
    assert all(all(s > 0 for s in b[3:]) for b in boxes), "box sizes must be positive (mm)"
    print(f"/infer: {len(boxes)} boxes in {seconds:.1f} s; server latencies {res.get('latencies', {}).get('total')} s")


def _infer(server, model: str, image: str, output: str) -> bytes:
    t0 = time.perf_counter()
    status, body = _post_multipart(
        f"{server['url']}/infer/{model}?image={image}&output={output}", {"params": "{}"}, timeout=INFER_TIMEOUT
    )
    log = (server["out"] / "server.log").read_text()[-4000:]
    assert status == 200, f"HTTP {status}: {body[:2000]!r}\n{log}"
    print(f"/infer/{model}: {time.perf_counter() - t0:.1f} s")
    return body


def test_infer_brats_returns_a_label_map_in_the_study_space(server, tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    body = _infer(server, BRATS, f"{BRATS}_case", "image")
    out = tmp_path / ("seg.nii.gz" if body[:2] == b"\x1f\x8b" else "seg.nii")
    out.write_bytes(body)
    seg = nib.load(str(out))
    study = nib.load(str(server["out"] / "studies" / f"{BRATS}_case.nii.gz"))
    assert seg.shape[:3] == study.shape[:3] and len(seg.shape) == 3, (seg.shape, study.shape)
    np.testing.assert_allclose(seg.affine, study.affine, atol=1e-4)
    values = set(np.unique(np.asarray(seg.dataobj)).astype(int).tolist())
    assert values <= {0, 1, 2, 4}, values  # BraTS 2021 label values (the inference config's default_edition)
    assert values - {0} <= set(server["info"]["models"][BRATS]["labels"].values()), values  # every value is named


def test_infer_cxr_returns_fourteen_scores(server) -> None:
    res = json.loads(_infer(server, CXR, f"{CXR}_case", "json"))
    pred = res["prediction"]
    labels = json.loads((ROOT / "bundles" / CXR / "configs" / "metadata.json").read_text())
    names = list(labels["network_data_format"]["outputs"]["pred"]["channel_def"].values())
    assert [p["label"].lower() for p in pred] == [n.lower() for n in names]
    assert all(0.0 <= p["score"] <= 1.0 for p in pred), pred
    if server["mode"] == "demo_ensemble":
        _assert_scores_are_the_fold_mean(server, [p["score"] for p in pred])


# Each checkpoint's 14 probabilities for the CXR study through the bundle's single-model path: inference.json +
# demo.json's preprocessing, network and inferer, then the sigmoid of its postprocessing. Prints one JSON list per
# checkpoint.
_SINGLE_SCORES = """
import json, sys, torch
from monai.bundle import ConfigParser
sys.path[:0] = ['.', sys.argv[1]]
from common.checkpoint import load_weights
p = ConfigParser()
p.read_config(['configs/inference.json', 'configs/demo.json'])
p.get_parsed_content('imports')
pre = p.get_parsed_content('preprocessing')
image = pre({'image': sys.argv[2]})['image'][None]
net = p.get_parsed_content('network_def', instantiate=True)
inferer = p.get_parsed_content('inferer')
for ckpt in sys.argv[3:]:
    load_weights(net, ckpt)
    with torch.no_grad():
        print(json.dumps(torch.sigmoid(inferer(image, net.eval()).float())[0].tolist()))
"""


def _assert_scores_are_the_fold_mean(server, served: list[float]) -> None:
    """The served CXR scores are the mean of the two folds' probabilities (the ensemble config's TTA is off for
    CXR14), each fold run alone through the bundle's plain inference path, and differ from either fold alone."""
    import numpy as np

    folds = [server["demo"] / CXR / "models" / f"fold{k}" / "model.pt" for k in (0, 1)]
    study = server["out"] / "studies" / f"{CXR}_case.png"
    cmd = [sys.executable, "-c", _SINGLE_SCORES, str(ROOT), str(study), *map(str, folds)]
    proc = subprocess.run(cmd, cwd=ROOT / "bundles" / CXR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = np.array([json.loads(line) for line in proc.stdout.strip().splitlines()[-2:]])
    assert np.abs(single[0] - single[1]).max() > 1e-3, "the two folds must differ for the mean to be tested"
    np.testing.assert_allclose(served, single.mean(0), atol=1e-5)


def test_train_brats_for_one_epoch(server) -> None:
    models = server["out"] / "app" / "model" / BRATS / "models"
    before = (models / "model.pt").stat().st_mtime
    t0 = time.perf_counter()
    params = {"max_epochs": 1, "run_id": "training", "val_split": 0.5, "device": "cpu", "multi_gpu": False}
    params["tracking"] = "none"
    status, body = _post_json(f"{server['url']}/train/{BRATS}?run_sync=true", params, timeout=INFER_TIMEOUT)
    log = (server["out"] / "server.log").read_text()[-6000:]
    assert status == 200, f"HTTP {status}: {body[:2000]!r}\n{log}"
    saved = sorted(p.name for p in models.glob("*.pt"))
    assert any("epoch=1" in n for n in saved), (saved, log)
    assert (models / "model.pt").stat().st_mtime > before, "the trained weights replace models/model.pt"
    print(f"/train/{BRATS}: 1 epoch in {time.perf_counter() - t0:.1f} s; {saved}")
