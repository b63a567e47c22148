"""``make loadtest``: 2,000 requests from 32 concurrent clients against gunicorn (default settings).

Passes when no request fails and every worker's resident memory after the run is within 10 % of what it
was after warm-up (200 requests at the same concurrency, so batch sizes and memory pools are at their
working size before the baseline is read). Not part of `make test` (a minute of full load); prints what it
measured and exits 1 on a failure. ``--requests`` and ``--clients`` change the load.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.serving import children, gunicorn_server, rss_mb, sample_request

MODELS = ("leukocyte", "metastasis")  # requests alternate between them
WARM_UP = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    with gunicorn_server("loadtest-data") as (base, server):
        return run(base, server, args.requests, args.clients)


def run(base: str, server: subprocess.Popen, total: int, clients: int) -> int:
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
