"""``make bench``: the model's own limit, this service under gunicorn, and a MAX-style baseline, side by side.

For each model: (a) in-process forward passes (images/s at batch 32, ms at batch 1, for ONNX Runtime and
TensorFlow, and whether they agree); (b) this service as configured by default (gunicorn, micro-batching,
the default runtime) and (c) bench/max_baseline.py, each under 1, 4, 8 and 16 concurrent clients sending
the same request: requests/s and p50/p95/p99 latency. Also start-up time to ready and resident memory.
Writes bench/results.json and prints a table of ratios. Timings depend on the machine and its load:
compare only figures of one run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import requests
from PIL import Image, ImageDraw

from config import ROOT

CLIENTS = (1, 4, 8, 16)
LOG = ROOT / ".cache" / "bench-servers.log"
MODELS = ("leukocyte", "metastasis")


def sample_request(model_id: str) -> bytes:
    """A typical upload: a 320x240 smear crop with one leukocyte; one 96x96 H&E patch."""
    if model_id == "leukocyte":
        image = Image.new("RGB", (320, 240), (225, 190, 200))
        ImageDraw.Draw(image).ellipse([130, 90, 190, 150], fill=(110, 60, 170))
    else:
        rng = np.random.default_rng(0)
        pixels = np.clip(rng.normal((200, 130, 180), 25, (96, 96, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def forward_limits(model_id: str, repeats: int) -> dict:
    """In-process forward passes of the network alone, per runtime."""
    from core.assets import read_spec
    from core.registry import model_class
    from core.runtime import build_forward

    model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
    model.configure(runtime="tensorflow", max_batch=1)
    model.load()
    shape = model.network.input_shape[1:]
    batch32 = np.random.default_rng(0).uniform(0, 255, (32, *shape)).astype(np.float32)
    out = {"views_per_request": 8 if model.uses_tta else 1, "runtimes": {}}
    reference = None
    for runtime in ("onnx", "tensorflow"):
        _, forward = build_forward(model.network, runtime)
        forward(batch32), forward(batch32[:1])
        started = time.perf_counter()
        for _ in range(repeats):
            forward(batch32)
        per_image = (time.perf_counter() - started) / (repeats * 32)
        singles = []
        for _ in range(repeats * 4):
            started = time.perf_counter()
            forward(batch32[:1])
            singles.append(time.perf_counter() - started)
        outputs = forward(batch32)
        reference = outputs if reference is None else reference
        out["runtimes"][runtime] = {"images_per_s": round(1 / per_image, 1),
                                    "forward_ms_batch1": round(1000 * statistics.median(singles), 2)}
    out["runtimes"]["max_abs_difference"] = float(np.max(np.abs(reference - outputs)))
    # One whole request in-process, as the service runs it (default runtime, decode and domain check included),
    # no HTTP.
    from core.imageio import decode_image

    model.configure(runtime="auto", max_batch=1)
    model.load()
    body, defaults = sample_request(model_id), {o.name: o.default for o in model.declared_options()}
    model.answer(decode_image(body, 64_000_000), defaults)
    times = []
    for _ in range(repeats * 2):
        started = time.perf_counter()
        model.answer(decode_image(body, 64_000_000), defaults)
        times.append(time.perf_counter() - started)
    out["inprocess_request_ms"] = round(1000 * statistics.median(times), 2)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode}; see {LOG}")
        try:
            if requests.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:  # not listening yet, or busy loading
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready in time")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def load(base: str, model_id: str, body: bytes, clients: int, seconds: float) -> dict:
    """``clients`` threads posting ``body`` back to back for ``seconds``; latency percentiles and rate."""
    url = f"{base}/model/{model_id}/predict"
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            started = time.perf_counter()
            response = session.post(url, files={"image": ("x.png", body)}, timeout=120)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors[0] += response.status_code != 200

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall = time.monotonic() - started
    ms = np.array(latencies) * 1000
    return {"rps": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "requests": len(latencies), "errors": errors[0]}


@contextmanager
def gunicorn_server(data_name: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """gunicorn as `make run` starts it (default settings), on a free loopback port, its log appended to LOG
    and its jobs under .cache/<data_name>: (base URL, process) once it is ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MMAX_HOST": "127.0.0.1", "MMAX_PORT": str(port),
           "MMAX_DATA_DIR": str(ROOT / ".cache" / data_name)}
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("ab") as log:
        server = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "app:create_app()"], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            print(f"ready in {wait_ready(base, server):.1f} s", flush=True)
            yield base, server
        finally:
            server.terminate()
            server.wait(30)


def serve_and_measure(command: list[str], env: dict, seconds: float) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    LOG.parent.mkdir(parents=True, exist_ok=True)
    log = LOG.open("ab")  # the access log of every request: a pipe would fill up and stall the server
    process = subprocess.Popen(command + (["--port", str(port)] if "bench.max_baseline" in command else []),
                               cwd=ROOT, env={**env, "MMAX_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready_s = wait_ready(base, process)
        out = {"ready_s": round(ready_s, 1), "models": {}}
        for model_id in MODELS:
            body = sample_request(model_id)
            load(base, model_id, body, 2, 2)  # warm both the client and the server paths
            out["models"][model_id] = {}
            for clients in CLIENTS:
                out["models"][model_id][str(clients)] = load(base, model_id, body, clients, seconds)
                print(f"  {model_id} {clients:>2} clients: {out['models'][model_id][str(clients)]}", flush=True)
        workers = children(process.pid) or [process.pid]
        out["rss_mb_per_worker"] = [rss_mb(pid) for pid in workers]
        return out
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="per client level")
    parser.add_argument("--repeats", type=int, default=20, help="forward passes per limit measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MMAX_HOST": "127.0.0.1", "MMAX_MODELS": ",".join(MODELS),
           "MMAX_DATA_DIR": str(ROOT / ".cache" / "bench-data")}
    python = sys.executable
    results: dict = {}
    for model_id in MODELS:
        print(f"[limit] {model_id}", flush=True)
        results[model_id] = forward_limits(model_id, args.repeats)
    print("[service] gunicorn, default settings", flush=True)
    service = serve_and_measure([str(Path(python).with_name("gunicorn")), "app:create_app()"], env, args.seconds)
    print("[baseline] MAX-style Flask development server", flush=True)
    baseline = serve_and_measure([python, "-m", "bench.max_baseline", "--models", ",".join(MODELS)], env,
                                 args.seconds)
    for model_id in MODELS:
        limits = results[model_id]
        fastest = max(limits["runtimes"][r]["images_per_s"] for r in ("onnx", "tensorflow"))
        limits["limit_images_per_s"] = fastest
        limits["forward_ms_batch1"] = min(limits["runtimes"][r]["forward_ms_batch1"] for r in ("onnx", "tensorflow"))
        limits["service"] = service["models"][model_id]
        limits["baseline"] = baseline["models"][model_id]
    results["startup"] = {"service_ready_s": service["ready_s"], "baseline_ready_s": baseline["ready_s"],
                          "service_rss_mb_per_worker": service["rss_mb_per_worker"],
                          "baseline_rss_mb": baseline["rss_mb_per_worker"]}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    print("\n| model | clients | service req/s | baseline req/s | service / baseline | service images/s / limit "
          "| service p50 / p95 / p99 ms | baseline p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for model_id in MODELS:
        r = results[model_id]
        for clients in CLIENTS:
            s, b = r["service"][str(clients)], r["baseline"][str(clients)]
            share = s["rps"] * r["views_per_request"] / r["limit_images_per_s"]
            print(f"| {model_id} | {clients} | {s['rps']} | {b['rps']} | {s['rps'] / max(b['rps'], 1e-9):.1f}x "
                  f"| {share:.0%} | {s['p50_ms']} / {s['p95_ms']} / {s['p99_ms']} | {b['p50_ms']} |")
    for model_id in MODELS:
        r = results[model_id]
        print(f"{model_id}: one client's p50 {r['service']['1']['p50_ms']} ms = "
              f"{r['service']['1']['p50_ms'] / r['inprocess_request_ms']:.2f}x the same request in-process "
              f"({r['inprocess_request_ms']} ms: decode, preprocess, forward with TTA, postprocess)")
    print("limits: " + "; ".join(
        f"{m}: {results[m]['limit_images_per_s']} images/s, batch-1 forward {results[m]['forward_ms_batch1']} ms "
        f"(onnx {results[m]['runtimes']['onnx']}, tensorflow {results[m]['runtimes']['tensorflow']})" for m in MODELS))
    print(f"start-up and memory: {json.dumps(results['startup'])}")


if __name__ == "__main__":
    main()
