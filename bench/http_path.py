"""What the HTTP path costs a cheap request, and the share of the in-process limit it leaves the service.

    .venv/bin/python -m bench.http_path [--upload metastasis] [--rounds 4] [--seconds 8]

In rounds, one after another (8 s each, 8 clients, bench.serving's client):

- the limit: the whole request in-process (decode, analysis, answer JSON), one single-threaded process per core;
- this service under gunicorn, default settings, every model loaded;
- the same service whose analysis is replaced by a constant answer, the upload still decoded
  (``constant_answer_app``): what gunicorn, Flask, Flask-RESTX, the multipart form, the hooks, the JSON answer,
  the access log and the kernel's loopback cost per request;
- the network's part alone, through that service (``network_only_app``: decoding, the network's input and its
  forward passes, then the constant answer) and in-process (one single-threaded process per core): whether a
  forward pass costs the same inside the service, where it shares its worker's core with the request threads.

Server CPU per request is read from /proc; in-process, from each process's own thread time. From them, the
share of the limit that a service paying only the HTTP path on top of the in-process work could reach:
``limit CPU / (limit CPU + path CPU - decoding) × (1 - client share)``, where the client's share of the cores
is what the load generator takes from the server (the limit runs without one). Writes bench/http_path.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench.serving import LOG, descendants, free_port, inprocess_rate, load, loaded_model, wait_ready
from bench.typical_uploads import Upload, typical_uploads
from config import ROOT

MAX_PIXELS = 64_000_000
CONSTANT = {"predictions": [{"label": "constant", "probability": 1.0}]}


def network_part(model, uploads: dict[str, bytes], options: dict[str, Any]) -> Any:
    """Decode, the network's input, its forward passes (with the model's views): the decoded inputs."""
    inputs = model.read_inputs(uploads, MAX_PIXELS)
    batch, _ = model.preprocess(inputs, options)
    model.run_network(batch)
    return inputs


def constant_answer_app(network: bool = False):
    """The service (``app.create_app``) with every analysis replaced by a constant answer after decoding, and
    after the network's part too when ``network``."""
    import api.model
    from app import create_app

    def analyse(registry, model_id: str, uploads: dict[str, bytes], options: dict[str, Any]):
        model = registry.get_ready(model_id)
        if not network:
            return model, model.read_inputs(uploads, MAX_PIXELS), dict(CONSTANT)
        with model.serving():  # the micro-batcher expects its forward calls, as in a real request
            return model, network_part(model, uploads, options), dict(CONSTANT)

    api.model.analyse = analyse  # predict() looks it up at each call
    return create_app()


def network_only_app():
    return constant_answer_app(network=True)


def _network_loop(upload: Upload, seconds: float, barrier, results) -> None:
    """In a process of its own, single-threaded: ``network_part`` of ``upload`` back to back for ``seconds``;
    puts (requests, thread CPU seconds)."""
    model, options = loaded_model(upload.model, 1)
    network_part(model, upload.files, options)
    barrier.wait()
    count, cpu, stop = 0, time.thread_time(), time.perf_counter() + seconds
    while time.perf_counter() < stop:
        network_part(model, upload.files, options)
        count += 1
    results.put((count, time.thread_time() - cpu))


def network_inprocess(upload: Upload, seconds: float) -> dict:
    """The network's part in one single-threaded process per core: requests/s and CPU ms per request."""
    context = multiprocessing.get_context("spawn")
    processes = os.cpu_count() or 1
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_network_loop, args=(upload, seconds, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    done = [results.get(timeout=seconds + 600) for _ in workers]
    for worker in workers:
        worker.join()
    count = sum(c for c, _ in done)
    return {"rps": round(count / seconds, 2), "cpu_ms_per_request": round(1000 * sum(t for _, t in done) / count, 3)}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` so far (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def decode_ms(upload: Upload, repeats: int = 300) -> float:
    """Median in-process time to decode ``upload`` as the model does (paid by the limit too)."""
    from core.assets import read_spec
    from core.registry import model_class

    model = model_class(upload.model)(read_spec(ROOT / "assets" / upload.model))
    times = []
    for _ in range(repeats):
        started = time.thread_time()
        model.read_inputs(upload.files, MAX_PIXELS)
        times.append(time.thread_time() - started)
    return 1000 * statistics.median(times)


@contextmanager
def server(app: str, env: dict[str, str], name: str) -> Iterator[tuple[str, list[int]]]:
    """gunicorn serving ``app`` on a free loopback port: (base URL, its worker pids) once ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("ab") as log:
        process = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), app], cwd=ROOT,
                                   env={**env, "MMAX_PORT": str(port), "MMAX_DATA_DIR": str(ROOT / ".cache" / name)},
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(base, process)
            yield base, descendants(process.pid) or [process.pid]
        finally:
            process.terminate()
            process.wait(30)


def measured(base: str, pids: list[int], upload: Upload, clients: int, seconds: float) -> dict:
    before = cpu_seconds(pids)
    out = load(base, upload, clients, seconds)
    out["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(pids) - before) / max(out["requests"], 1), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upload", default="metastasis", choices=("metastasis", "leukocyte"),
                        help="the typical patch or smear crop (bench/typical_uploads.py)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "http_path.json")
    args = parser.parse_args()
    upload = next(u for u in typical_uploads(None) if u.name == args.upload)
    cores = os.cpu_count() or 1
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MMAX_HOST": "127.0.0.1"}
    rounds = []
    with server("app:create_app()", env, "http-path-service") as service, \
            server("bench.http_path:constant_answer_app()", env, "http-path-constant") as constant, \
            server("bench.http_path:network_only_app()", env, "http-path-network") as network:
        for base, _ in (service, constant, network):
            load(base, upload, 2, 2)  # warm every path
        for number in range(args.rounds):
            limit = inprocess_rate(upload, cores, 1, args.seconds)
            row = {"limit_rps": limit["rps"], "limit_cpu_ms_per_request": round(1000 * cores / limit["rps"], 3),
                   "service": measured(*service, upload, args.clients, args.seconds),
                   "constant_answer": measured(*constant, upload, args.clients, args.seconds),
                   "network_only": measured(*network, upload, args.clients, args.seconds),
                   "network_only_inprocess": network_inprocess(upload, args.seconds)}
            row["service_over_limit"] = round(row["service"]["rps"] / limit["rps"], 3)
            rounds.append(row)
            print(f"round {number}: limit {limit['rps']} req/s ({row['limit_cpu_ms_per_request']} ms of CPU each); "
                  f"service {row['service']['rps']} ({row['service']['server_cpu_ms_per_request']} ms; "
                  f"{row['service_over_limit']} of the limit); constant answer {row['constant_answer']['rps']} "
                  f"({row['constant_answer']['server_cpu_ms_per_request']} ms); network only "
                  f"{row['network_only']['server_cpu_ms_per_request']} ms through the service, "
                  f"{row['network_only_inprocess']['cpu_ms_per_request']} ms in-process", flush=True)
    decode = decode_ms(upload)

    def mean(path: list[str]) -> float:
        values = []
        for row in rounds:
            value: Any = row
            for key in path:
                value = value[key]
            values.append(value)
        return float(np.mean(values))

    limit_cpu, path_cpu = mean(["limit_cpu_ms_per_request"]), mean(["constant_answer", "server_cpu_ms_per_request"])
    client_share = mean(["service", "client_cpu_share"])  # of all cores, as load() reports it
    summary = {
        "limit_cpu_ms_per_request": round(limit_cpu, 3),
        "service_cpu_ms_per_request": round(mean(["service", "server_cpu_ms_per_request"]), 3),
        "http_path_cpu_ms_per_request": round(path_cpu, 3),
        "network_only_cpu_ms_per_request": round(mean(["network_only", "server_cpu_ms_per_request"]), 3),
        "network_only_inprocess_cpu_ms_per_request": round(mean(["network_only_inprocess", "cpu_ms_per_request"]), 3),
        "decode_ms": round(decode, 3),
        "client_cpu_share": round(client_share, 3),
        "service_over_limit": round(mean(["service_over_limit"]), 3),
        "ceiling_over_limit": round(limit_cpu / (limit_cpu + path_cpu - decode) * (1 - client_share), 3),
    }
    args.out.write_text(json.dumps({"upload": upload.name, "clients": args.clients, "seconds": args.seconds,
                                    "cores": cores, "rounds": rounds, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
