"""Resident memory of one service worker with all five models: at ready, after one-at-a-time uploads, and after
bursts of concurrent large uploads (the performance issue asks for at most 1.2 GB per worker).

gunicorn as `make run` starts it, with one worker; each typical upload (bench/typical_uploads.py) sent twice one at
a time, then bursts sent at once: 4 regions, 4 mitosis fields, 8 mixed large uploads; the worker's resident
memory after each step and 3 s after the last. Also the time from start to ready. Writes
bench/worker_memory.json.

    .venv/bin/python -m bench.worker_memory [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.serving import children, gunicorn_server, rss_mb
from bench.typical_uploads import Upload, typical_uploads
from config import ROOT

OUT = ROOT / "bench" / "worker_memory.json"


def send(base: str, upload: Upload) -> int:
    files = {field: (f"{field}.png", data) for field, data in upload.files.items()}
    return requests.post(f"{base}/model/{upload.model}/predict", files=files, timeout=300).status_code


def burst(base: str, uploads: list[Upload]) -> list[int]:
    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(lambda upload: send(base, upload), uploads))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_memory", description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args(argv)
    uploads = {upload.name: upload for upload in typical_uploads(args.data)}
    large = [uploads[name] for name in ("metastasis region", "mitosis", "chromosome", "protein") if name in uploads]
    steps: dict[str, float] = {}
    started = time.monotonic()
    with gunicorn_server("bench-worker-memory", {"MMAX_WORKERS": "1"}) as (base, server):
        steps["ready_s"] = round(time.monotonic() - started, 1)
        (worker,) = children(server.pid)
        steps["ready"] = rss_mb(worker)
        statuses = [send(base, upload) for upload in uploads.values() for _ in range(2)]
        steps["after one-at-a-time uploads"] = rss_mb(worker)
        for name, sent in (("4 regions at once", [uploads.get("metastasis region")] * 4),
                           ("4 mitosis fields at once", [uploads.get("mitosis")] * 4),
                           ("8 mixed large uploads at once", large * (8 // max(1, len(large))))):
            sent = [upload for upload in sent if upload is not None]
            if sent:
                statuses += burst(base, sent)
                steps[f"after {name}"] = rss_mb(worker)
        time.sleep(3)
        steps["idle, 3 s later"] = rss_mb(worker)
    report = {"command": "python -m bench.worker_memory", "rss_mb": steps,
              "answers": {str(code): statuses.count(code) for code in sorted(set(statuses))}}
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
