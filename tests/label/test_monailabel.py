"""MONAI Label 0.8.5 serves the LUNA16 bundle: app assembled by tools/label_app.py, /info/ and /infer/ over HTTP.

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
STARTUP_TIMEOUT = 300
INFER_TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("monailabel", reason="MONAI Label environment needed (see module docstring)")
    out = tmp_path_factory.mktemp("label")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "label_app.py"), "--out", str(out), "--bundles", BUNDLE],
        check=True,
        env=env,
        timeout=600,
    )
    build_s = time.perf_counter() - t0
    port = _free_port()
    log = open(out / "server.log", "w")  # noqa: SIM115 - closed in teardown
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(out / "app")]
    cmd += ["--studies", str(out / "studies"), "--conf", "models", BUNDLE, "--conf", "zoo_source", "github"]
    cmd += ["--conf", "sam2", "false", "--conf", "use_pretrained_model", "false", "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
        print(f"app built in {build_s:.0f} s, server up after {time.perf_counter() - t0 - build_s:.0f} s")
        yield {"url": url, "info": info, "out": out}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_info_lists_the_bundle_as_detection(server) -> None:
    models = server["info"]["models"]
    assert BUNDLE in models, server["info"]
    m = models[BUNDLE]
    assert m["type"] == "detection"
    assert m["labels"] == {"nodule": 0}
    assert m["dimension"] == 3
    meta = json.loads((ROOT / "bundles" / BUNDLE / "configs" / "metadata.json").read_text())
    assert m["version"] == meta["version"]
    assert server["info"]["datastore"]["total"] == 1


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
