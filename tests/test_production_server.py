"""The production command (gunicorn with gunicorn.conf.py) serves, over a real socket on loopback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from config import ROOT
from tests.images import encode, smear


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gunicorn_serves_predictions_and_metrics_from_two_workers(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "MMAX_HOST": "127.0.0.1", "MMAX_PORT": str(port), "MMAX_WORKERS": "2",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "MMAX_DATA_DIR": str(tmp_path / "data")}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen([str(gunicorn), "app:create_app()"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                if requests.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            raise AssertionError("gunicorn did not become ready")
        for _ in range(4):  # spread over both workers
            response = requests.post(f"{base}/model/leukocyte/predict", files={"image": encode(smear())}, timeout=60)
            assert response.status_code == 200 and response.json()["status"] == "ok"
        bad = requests.post(f"{base}/model/leukocyte/predict", files={"image": b"not an image"}, timeout=60)
        assert bad.status_code == 415
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        line = next(l for l in metrics.splitlines()
                    if l.startswith("mmax_requests_total{") and 'status="200"' in l and "predict" in l)
        assert float(line.rsplit(" ", 1)[1]) >= 4  # every worker's requests are counted
    finally:
        server.terminate()
        server.wait(timeout=30)
