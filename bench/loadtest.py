"""``make loadtest``: 2,000 requests from 32 concurrent clients against gunicorn (default settings).

Passes when no request fails and every worker's resident memory after the run is within 10 % of what it
was after warm-up (200 requests at the same concurrency, so batch sizes and memory pools are at their
working size before the baseline is read). Not part of `make test` (a minute of full load); prints what it
measured and exits 1 on a failure. ``--requests`` and ``--clients`` change the load.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.serving import LOG, children, free_port, rss_mb, sample_request, wait_ready
from config import ROOT

MODELS = ("leukocyte", "metastasis")  # requests alternate between them
WARM_UP = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MMAX_HOST": "127.0.0.1", "MMAX_PORT": str(port),
           "MMAX_DATA_DIR": str(ROOT / ".cache" / "loadtest-data")}
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("ab") as log:
        server = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "app:create_app()"], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            return run(base, server, args.requests, args.clients)
        finally:
            server.terminate()
            server.wait(30)


def run(base: str, server: subprocess.Popen, total: int, clients: int) -> int:
    print(f"ready in {wait_ready(base, server):.1f} s", flush=True)
    bodies = {model: sample_request(model) for model in MODELS}
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def burst(count: int) -> float:
        """``count`` requests from ``clients`` threads, alternating models; returns the seconds taken."""
        sent = [0]

        def client() -> None:
            session = requests.Session()
            while True:
                with lock:
                    if sent[0] >= count:
                        return
                    index = sent[0]
                    sent[0] += 1
                model = MODELS[index % len(MODELS)]
                try:
                    status = session.post(f"{base}/model/{model}/predict",
                                          files={"image": ("x.png", bodies[model])}, timeout=300).status_code
                except requests.RequestException:
                    status = 0
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            for _ in range(clients):
                pool.submit(client)
        return time.monotonic() - started

    # Warm-up at the same concurrency, so batch sizes and allocator pools reach their working size first.
    burst(WARM_UP)
    workers = children(server.pid)
    warm = {pid: rss_mb(pid) for pid in workers}
    statuses.clear()
    seconds = burst(total)
    after = {pid: rss_mb(pid) for pid in workers}
    errors = sum(count for status, count in statuses.items() if status != 200)
    growth = max((after[pid] - warm[pid]) / warm[pid] for pid in workers)
    print(f"{total} requests, {clients} clients, {seconds:.1f} s ({total / seconds:.1f} req/s); statuses {statuses}")
    print(f"resident memory per worker after warm-up {warm} MB, after the run {after} MB; "
          f"largest growth {growth:+.1%}")
    ok = errors == 0 and growth <= 0.10 and all(pid in children(server.pid) for pid in workers)
    print("PASS" if ok else "FAIL: errors, memory growth over 10 %, or a worker restarted")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
