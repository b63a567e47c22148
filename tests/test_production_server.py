"""The production command (gunicorn with gunicorn.conf.py) serves, over a real socket on loopback."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from config import ROOT
from tests.images import encode, pyramid_tiff, section, smear


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(tmp_path: Path, workers: int, **settings: str) -> tuple[subprocess.Popen, str]:
    """gunicorn as `make run` starts it, on a free loopback port, ready; returns the process and base URL."""
    port = free_port()
    env = {**os.environ, "MMAX_HOST": "127.0.0.1", "MMAX_PORT": str(port), "MMAX_WORKERS": str(workers),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "MMAX_DATA_DIR": str(tmp_path / "data"),
           **{f"MMAX_{key.upper()}": value for key, value in settings.items()}}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen([str(gunicorn), "app:create_app()"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        try:
            if requests.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return server, base
        except requests.RequestException:
            pass
        time.sleep(1)
    server.terminate()
    raise AssertionError("gunicorn did not become ready")


def worker_pids(master: int) -> set[int]:
    pids = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"PPid:\t{master}\n" in status.read_text():
                pids.add(int(status.parent.name))
        except OSError:
            continue
    return pids


def test_gunicorn_serves_predictions_and_metrics_from_two_workers(tmp_path: Path):
    server, base = start_gunicorn(tmp_path, workers=2)
    try:
        for _ in range(4):  # spread over both workers
            response = requests.post(f"{base}/model/leukocyte/predict", files={"image": encode(smear())}, timeout=60)
            assert response.status_code == 200 and response.json()["status"] == "ok"
        bad = requests.post(f"{base}/model/leukocyte/predict", files={"image": b"not an image"}, timeout=60,
                            headers={"X-Request-ID": "trace-me-0815"})
        assert bad.status_code == 415 and bad.headers["X-Request-ID"] == "trace-me-0815"
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        line = next(row for row in metrics.splitlines()
                    if row.startswith("mmax_requests_total{") and 'status="200"' in row and "predict" in row)
        assert float(line.rsplit(" ", 1)[1]) >= 4  # every worker's requests are counted
    finally:
        server.terminate()
        server.wait(timeout=30)
    access = [row for row in (tmp_path / "server.log").read_text().splitlines() if "POST /model/leukocyte" in row]
    assert any(row.endswith("request_id=trace-me-0815") and '" 415 ' in row for row in access), access[-3:]


def established_sockets(pid: int, port: int) -> int:
    """How many established TCP connections on local ``port`` the process ``pid`` holds."""
    on_port = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: established
            on_port.add(f"socket:[{fields[9]}]")
    held = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            held.add(os.readlink(descriptor))
        except OSError:
            continue
    return len(held & on_port)


def test_keep_alive_clients_are_spread_evenly_over_the_workers(tmp_path: Path):
    """Eight clients that keep their connections open, connecting one after another: each of two workers
    holds four (left to the kernel, such starts gave 5/3 and 7/1: api/gunicorn_worker.py)."""
    server, base = start_gunicorn(tmp_path, workers=2, models="metastasis")
    port = int(base.rsplit(":", 1)[1])
    clients = []
    try:
        time.sleep(1)  # the readiness checks' connections have been closed
        for _ in range(8):
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            client.request("GET", "/model/metastasis/labels")
            response = client.getresponse()
            assert response.status == 200 and response.read()
            clients.append(client)
        held = [established_sockets(pid, port) for pid in worker_pids(server.pid)]
        assert sorted(held) == [4, 4], held
    finally:
        for client in clients:
            client.close()
        server.terminate()
        server.wait(timeout=30)


def test_killed_workers_are_replaced_and_their_jobs_are_not_lost(tmp_path: Path):
    """kill -9 the worker that runs a whole-slide job: gunicorn starts a new worker, later requests
    succeed, and the job is re-queued by a live runner and finishes."""
    slide = tmp_path / "big.tif"
    pyramid_tiff(slide, section((4096, 3072)), mpp=0.25, levels=3)
    server, base = start_gunicorn(tmp_path, workers=2, models="metastasis", job_stale_s="3")
    try:
        with open(slide, "rb") as handle:
            job = requests.post(f"{base}/model/metastasis/jobs", files={"slide": ("big.tif", handle)},
                                timeout=60).json()
        deadline = time.monotonic() + 120
        while (state := requests.get(f"{base}/jobs/{job['id']}", timeout=10).json())["status"] != "running":
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        with sqlite3.connect(tmp_path / "data" / "jobs.sqlite") as db:
            worker = db.execute("SELECT worker FROM jobs WHERE id = ?", (job["id"],)).fetchone()[0]
        victim = int(worker.split(":")[1])
        before = worker_pids(server.pid)
        assert victim in before
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 240
        while True:
            state = requests.get(f"{base}/jobs/{job['id']}", timeout=30).json()
            if state["status"] in {"done", "failed"}:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        assert state["status"] == "done" and state["attempts"] == 2, state
        assert victim not in worker_pids(server.pid) and len(worker_pids(server.pid)) == 2  # replaced
        patch = Image.new("RGB", (96, 96), (200, 120, 180))
        for _ in range(4):
            response = requests.post(f"{base}/model/metastasis/predict", files={"image": encode(patch)}, timeout=120)
            assert response.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("setting, value, words", [
    ("DATA_DIR", "{blocker}/data", "MMAX_DATA_DIR"),
    ("ASSETS_DIR", "{tmp}/no-assets", "no-assets"),
])
def test_bad_settings_stop_gunicorn_with_one_clear_line(tmp_path: Path, setting, value, words):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    if setting == "ASSETS_DIR":
        (tmp_path / "no-assets" / "leukocyte").mkdir(parents=True)
        (tmp_path / "no-assets" / "leukocyte" / "model.json").write_text(
            '{"id": "leukocyte", "name": "x", "labels": [], "weights": {"file": "gone.keras"}}')
    env = {**os.environ, "MMAX_PORT": str(free_port()), "MMAX_DATA_DIR": str(tmp_path / "data"),
           f"MMAX_{setting}": value.format(blocker=blocker, tmp=tmp_path)}
    run = subprocess.run([str(Path(sys.executable).with_name("gunicorn")), "app:create_app()"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and words in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]



def multipart(data: bytes, boundary: str = "b") -> tuple[bytes, bytes]:
    """(head, body) of a raw HTTP/1.1 leukocyte upload of ``data``, sent by hand to control its pace."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cell.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /model/leukocyte/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n").encode()
    return head, body


def read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_slow_clients_hold_no_request_thread(tmp_path: Path):
    """One request thread, four clients sending their uploads a few bytes at a time: other clients' requests
    and the probes are answered at once, and each slow upload is answered 200 when it has arrived. A client
    that waits for 100 Continue gets it once; one that never finishes gets a JSON 408 after
    MMAX_UPLOAD_TIMEOUT_S; one that leaves mid-request is dropped; requests gunicorn itself refuses get JSON."""
    server, base = start_gunicorn(tmp_path, workers=1, threads="1", models="leukocyte", upload_timeout_s="6")
    port = int(base.rsplit(":", 1)[1])
    head, body = multipart(encode(smear()))
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        for sock in slow:
            sock.sendall(head + b"\r\n" + body[:10])
        time.sleep(0.5)
        for route in ("/health/live", "/health/ready", "/v2/health/live"):
            started = time.monotonic()
            assert requests.get(f"{base}{route}", timeout=5).status_code == 200
            assert time.monotonic() - started < 1, route
        with requests.Session() as session:  # one kept-alive connection, several requests
            for _ in range(3):
                started = time.monotonic()
                response = session.post(f"{base}/model/leukocyte/predict", files={"image": encode(smear())},
                                        timeout=10)
                assert response.status_code == 200 and time.monotonic() - started < 5
        for offset in range(10, 40, 10):  # still trickling
            for sock in slow:
                sock.sendall(body[offset:offset + 10])
            time.sleep(0.2)
        for sock in slow:
            sock.sendall(body[40:])
            answer = read_all(sock)
            assert answer.startswith(b"HTTP/1.1 200") and b"predictions" in answer, answer[:200]

        expecting = socket.create_connection(("127.0.0.1", port))
        expecting.sendall(head + b"Expect: 100-continue\r\n\r\n")
        expecting.settimeout(5)
        assert expecting.recv(64).startswith(b"HTTP/1.1 100 Continue")
        expecting.sendall(body)
        answer = read_all(expecting)
        expecting.close()
        assert answer.startswith(b"HTTP/1.1 200") and b"100 Continue" not in answer, answer[:200]

        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(head + b"\r\n" + body[:10])
        stalled.settimeout(30)
        started = time.monotonic()
        answer = read_all(stalled)
        stalled.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"MMAX_UPLOAD_TIMEOUT_S" in answer, answer[:300]
        assert 5 < time.monotonic() - started < 15

        worker = next(iter(worker_pids(server.pid)))

        def cpu_seconds() -> float:
            fields = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu_seconds()
        abandoned = socket.create_connection(("127.0.0.1", port))
        abandoned.sendall(head + b"\r\n" + body[:10])  # and gone, mid-request: dropped, not read forever
        abandoned.close()
        time.sleep(3)
        assert cpu_seconds() - before < 1.0  # it once spun a core on the closed socket until the upload timeout

        for raw, status in ((b"GARBAGE\r\n\r\n", b"400"),  # gunicorn refuses these itself: JSON, not HTML
                            (b"GET /health/live HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120))
                             + b"\r\n", b"431")):
            refused = socket.create_connection(("127.0.0.1", port))
            refused.sendall(raw)
            answer = read_all(refused)
            refused.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 " + status) and b"Content-Type: application/json" in head, answer[:300]
            assert json.loads(body)["status"] == "error"
        assert requests.get(f"{base}/health/live", timeout=5).status_code == 200
    finally:
        for sock in slow:
            sock.close()
        server.terminate()
        server.wait(timeout=30)


def test_probes_answer_while_the_request_thread_is_busy(tmp_path: Path):
    """One request thread, busy for seconds with a large smear: the probes have threads of their own
    (api/gunicorn_worker.py) and answer within a second, again and again, while it works."""
    server, base = start_gunicorn(tmp_path, workers=1, threads="1", models="leukocyte", request_timeout_s="0")
    busy = {}
    crowded = encode(smear((4000, 3000), leukocytes=[(x, y, 30) for x in range(100, 4000, 200)
                                                         for y in range(100, 3000, 200)]))

    def large_request():
        busy["status"] = requests.post(f"{base}/model/leukocyte/predict", files={"image": crowded},
                                       timeout=300).status_code
        busy["ended"] = time.monotonic()

    worker = threading.Thread(target=large_request)
    try:
        started = time.monotonic()
        worker.start()
        answered = []  # (sent, answered) of each probe
        while worker.is_alive():
            sent = time.monotonic()
            route = ("/health/live", "/health/ready", "/v2/health/live", "/metrics")[len(answered) % 4]
            assert requests.get(f"{base}{route}", timeout=5).status_code == 200
            answered.append((sent, time.monotonic()))
            assert answered[-1][1] - sent < 1, route
            time.sleep(0.2)
        worker.join()
        assert busy["status"] == 200
        during = [a for a in answered if a[0] > started + 1 and a[1] < busy["ended"]]
        assert len(during) >= 3, (busy["ended"] - started, len(answered))  # they overlapped the work
    finally:
        worker.join(timeout=300)
        server.terminate()
        server.wait(timeout=30)


def test_two_instances_on_one_postgresql_queue_share_jobs_and_survive_one_killed(tmp_path: Path,
                                                                                   postgresql_server):
    """Two servers (as on two hosts) on one PostgreSQL queue and one data volume: a job submitted to one is
    readable from the other; kill -9 the instance that runs it, and the other re-queues and finishes it."""
    import psycopg

    slide = tmp_path / "big.tif"
    pyramid_tiff(slide, section((4096, 3072)), mpp=0.25, levels=3)
    settings = {"models": "metastasis", "job_stale_s": "3", "job_store": postgresql_server.new_database()}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    servers = [start_gunicorn(tmp_path / name, workers=1, data_dir=str(tmp_path / "shared"), **settings)
               for name in ("a", "b")]
    try:
        with open(slide, "rb") as handle:
            job = requests.post(f"{servers[0][1]}/model/metastasis/jobs", files={"slide": ("big.tif", handle)},
                                timeout=60).json()
        deadline = time.monotonic() + 120
        while requests.get(f"{servers[1][1]}/jobs/{job['id']}", timeout=10).json()["status"] != "running":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        with psycopg.connect(settings["job_store"]) as db:  # host:pid:nonce of the runner that has it
            victim = int(db.execute("SELECT worker FROM jobs WHERE id = %s", (job["id"],)).fetchone()[0]
                         .split(":")[1])
        running = next(k for k, (server, _) in enumerate(servers) if victim in worker_pids(server.pid))
        os.kill(servers[running][0].pid, signal.SIGKILL)  # the whole instance: its master, then its worker
        os.kill(victim, signal.SIGKILL)
        survivor = servers[1 - running][1]
        deadline = time.monotonic() + 240
        while (state := requests.get(f"{survivor}/jobs/{job['id']}", timeout=30).json())["status"] not in {
                "done", "failed"}:
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        assert state["status"] == "done" and state["attempts"] == 2, state
        assert requests.get(f"{survivor}/jobs/{job['id']}/result", timeout=30).json()["job_id"] == job["id"]
    finally:
        for server, _ in servers:
            server.kill()
            server.wait(timeout=30)
