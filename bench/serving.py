"""``make bench``: the real limit of each request, this service under gunicorn, and a MAX-style baseline, side by side.

For each model: in-process forward passes of the network alone (images/s at batch 32, ms at batch 1, for ONNX
Runtime and TensorFlow, and whether they agree). For each typical upload (bench/typical_uploads.py: every model,
the metastasis patch and region apart): (a) the limit, the whole request in-process (decode, analysis, answer
JSON; no HTTP) back to back, once in one process with the runtimes' threads and once in one single-threaded
process per core, the better of the two being the limit, measured just before and just after the service's
figures for that upload (the mean of the two: the machine's speed drifts over minutes); (b) this service as
configured by default (gunicorn, micro-batching, the default runtime; and once with one worker), (c) the same
pipeline served by BentoML with adaptive batching (bench/bentoml_peer.py, in its own environment, made here on
first use) and (d) bench/max_baseline.py, each under 1, 4, 8 and 16 concurrent clients sending that upload:
requests/s and p50/p95/p99 latency, and the service's share of the limit. Also start-up time to ready and
resident memory. Writes bench/results.json and prints the tables.
Timings depend on the machine and its load: compare only figures of one run.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
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
from typing import Callable, Iterator

import numpy as np
import requests
from urllib3 import encode_multipart_formdata

from bench.typical_uploads import Upload, he_patch, smear_crop, typical_uploads
from config import ROOT

CLIENTS = (1, 4, 8, 16)
LOG = ROOT / ".cache" / "bench-servers.log"
BENTOML_VENV = ROOT / ".cache" / "bentoml-venv"
MAX_PIXELS = 64_000_000


def sample_request(model_id: str) -> bytes:
    """The typical leukocyte or metastasis-patch upload's image (the load test and the soak send it)."""
    return {"leukocyte": smear_crop, "metastasis": he_patch}[model_id]().files["image"]


def forward_limits(model_id: str, repeats: int) -> dict:
    """In-process forward passes of the network alone, per runtime."""
    from core.assets import read_spec
    from core.registry import model_class
    from core.runtime import build_forward

    import keras

    model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
    network = keras.saving.load_model(model.spec.weights_path, compile=False)
    shape = network.input_shape[1:]
    batch32 = np.random.default_rng(0).uniform(0, 255, (32, *shape)).astype(np.float32)
    out = {"views_per_request": 8 if model.uses_tta else 1, "runtimes": {}}
    reference = None
    for runtime in ("onnx", "tensorflow"):
        _, forward = build_forward(network, runtime)
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
    return out


def loaded_model(model_id: str, threads: int):
    """(model, its default options): the model loaded as the service loads it, with no micro-batcher, its
    forward passes on ``threads`` threads (0: the runtimes' defaults)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core import runtime
    from core.assets import read_spec
    from core.registry import model_class

    if threads:
        runtime.limit_threads(threads)
        runtime.single_threaded_blas()
    model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
    model.configure(runtime="auto", max_batch=1)
    model.load()
    return model, {o.name: o.default for o in model.declared_options()}


def _request_loop(upload: Upload, threads: int, seconds: float, barrier, results) -> None:
    """In a process of its own: the model loaded as the service loads it, then ``upload`` answered back to back
    (decode, analysis, answer JSON) for ``seconds`` once every process is ready; puts (count, latencies)."""
    model, options = loaded_model(upload.model, threads)

    def one() -> None:
        json.dumps(model.answer(model.read_inputs(upload.files, MAX_PIXELS), options))

    one()
    barrier.wait()
    latencies, stop = [], time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        one()
        latencies.append(time.perf_counter() - started)
    results.put(latencies)


def inprocess_rate(upload: Upload, processes: int, threads: int, seconds: float) -> dict:
    """Requests/s of ``processes`` processes answering ``upload`` back to back (``threads`` per process; 0:
    the runtimes' defaults), no HTTP; latency percentiles of one request."""
    context = multiprocessing.get_context("spawn")  # TensorFlow's and ONNX Runtime's threads do not survive fork
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_request_loop, args=(upload, threads, seconds, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    latencies = [t for _ in workers for t in results.get(timeout=seconds + 600)]
    for worker in workers:
        worker.join()
    ms = np.array(latencies) * 1000
    return {"processes": processes, "threads_per_process": threads or "default", "rps": round(len(ms) / seconds, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def inprocess_limit(upload: Upload, seconds: float) -> dict:
    """The whole request's real limit on this machine: the better of one process using every core through its
    runtimes' threads and one single-threaded process per core."""
    one = inprocess_rate(upload, 1, 0, seconds)
    per_core = inprocess_rate(upload, os.cpu_count() or 1, 1, seconds)
    best = max(one, per_core, key=lambda r: r["rps"])
    return {"one_process": one, "one_process_per_core": per_core, "inprocess_all_cores_rps": best["rps"]}


def mean_limit(measurements: list[dict]) -> dict:
    """The limit measured before and after an upload's service figures: each configuration's rate averaged,
    both measurements kept."""
    out: dict = {"measurements": measurements}
    for key in ("one_process", "one_process_per_core"):
        out[key] = {**measurements[0][key], **{figure: round(statistics.mean(m[key][figure] for m in measurements), 2)
                                               for figure in ("rps", "p50_ms", "p99_ms")}}
    out["inprocess_all_cores_rps"] = max(out["one_process"]["rps"], out["one_process_per_core"]["rps"])
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 300, ready_path: str = "/health/ready") -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode}; see {LOG}")
        try:
            if requests.get(f"{base}{ready_path}", timeout=2).status_code == 200:
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


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` that runs Python (BentoML starts its workers through an arbiter)."""
    found, queue = [], children(pid)
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children(child))
    return [p for p in found if "python" in Path(f"/proc/{p}/exe").resolve().name] if found else []


def load(base: str, upload: Upload, clients: int, seconds: float) -> dict:
    """``clients`` threads posting ``upload`` back to back for ``seconds``; latency percentiles and rate.

    The clients share the server's cores, so they are kept cheap: the multipart body is encoded once and each
    thread keeps one HTTP/1.1 connection open (http.client; a server that closes it is reconnected to). The
    CPU the clients used is reported as ``client_cpu_share`` (of all cores): what the server could not use."""
    host, port = base.removeprefix("http://").split(":")
    body, content_type = encode_multipart_formdata(
        {field: (f"{field}.png", data, "application/octet-stream") for field, data in upload.files.items()})
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    path = f"/model/{upload.model}/predict"
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                response.read()
                failed = response.status != 200
            except (OSError, http.client.HTTPException):  # e.g. no answer within 120 s: counted, not lost
                connection.close()
                failed = True
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors[0] += failed
        connection.close()

    started, cpu = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    ms = np.array(latencies) * 1000
    return {"rps": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "requests": len(latencies), "errors": errors[0],
            "client_cpu_share": round(cpu / wall / (os.cpu_count() or 1), 3)}


@contextmanager
def gunicorn_server(data_name: str, settings: dict[str, str] | None = None
                    ) -> Iterator[tuple[str, subprocess.Popen]]:
    """gunicorn as `make run` starts it (default settings, unless ``settings`` names MMAX_* variables), on a
    free loopback port, its log appended to LOG and its jobs under .cache/<data_name>: (base URL, process)
    once it is ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MMAX_HOST": "127.0.0.1", "MMAX_PORT": str(port),
           "MMAX_DATA_DIR": str(ROOT / ".cache" / data_name), **(settings or {})}
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


def bentoml_command() -> list[str]:
    """``bentoml serve`` of bench/bentoml_peer.py, from its own environment (made on first use, a few minutes)."""
    bentoml = BENTOML_VENV / "bin" / "bentoml"
    requirements = ROOT / "bench" / "requirements-bentoml.txt"
    stamp = BENTOML_VENV / "requirements.txt"
    if not bentoml.exists() or not stamp.exists() or stamp.read_text() != requirements.read_text():
        print(f"[peer] making the BentoML environment in {BENTOML_VENV.relative_to(ROOT)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(BENTOML_VENV)], check=True)
        subprocess.run([str(BENTOML_VENV / "bin" / "pip"), "install", "--quiet", "-r", str(requirements)],
                       check=True)
        stamp.write_text(requirements.read_text())
    return [str(bentoml), "serve", "bench.bentoml_peer:MicroscopyPeer"]


def serve_and_measure(command: list[str], env: dict, uploads: list[Upload], seconds: float,
                      clients_levels: tuple[int, ...] = CLIENTS, ready_path: str = "/health/ready",
                      beside: Callable[[Upload], None] | None = None) -> dict:
    """Start ``command`` (``--port`` added unless it is gunicorn, which reads MMAX_PORT), then measure each
    upload at each client count; resident memory of its worker processes afterwards. ``beside(upload)`` runs
    just before and just after each upload's measurements, while the server idles: the machine's speed drifts
    over minutes, so a limit measured there is comparable with the service's figures."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    LOG.parent.mkdir(parents=True, exist_ok=True)
    log = LOG.open("ab")  # the access log of every request: a pipe would fill up and stall the server
    gunicorn = Path(command[0]).name == "gunicorn"
    process = subprocess.Popen(command + ([] if gunicorn else ["--port", str(port)]),
                               cwd=ROOT, env={**env, "MMAX_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready_s = wait_ready(base, process, ready_path=ready_path)
        out = {"ready_s": round(ready_s, 1), "uploads": {}}
        for upload in uploads:
            load(base, upload, 2, 2)  # warm both the client and the server paths
            if beside:
                beside(upload)
            out["uploads"][upload.name] = {}
            for clients in clients_levels:
                out["uploads"][upload.name][str(clients)] = load(base, upload, clients, seconds)
                print(f"  {upload.name} {clients:>2} clients: {out['uploads'][upload.name][str(clients)]}", flush=True)
            if beside:
                beside(upload)
        workers = descendants(process.pid) or [process.pid]
        out["rss_mb_per_worker"] = [rss_mb(pid) for pid in workers]
        return out
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the shared data (the real spread, field, region and mitosis field)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per client level and per limit measurement")
    parser.add_argument("--repeats", type=int, default=20, help="forward passes per network measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()
    uploads = typical_uploads(args.data)
    models = sorted({upload.model for upload in uploads})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MMAX_HOST": "127.0.0.1", "MMAX_MODELS": ",".join(models),
           "MMAX_DATA_DIR": str(ROOT / ".cache" / "bench-data")}
    python = sys.executable
    results: dict = {}
    for model_id in models:
        print(f"[network] {model_id}", flush=True)
        results[model_id] = forward_limits(model_id, args.repeats)
    limits: dict[str, list[dict]] = {upload.name: [] for upload in uploads}

    def measure_limit(upload: Upload) -> None:
        print(f"[limit] {upload.name}", flush=True)
        limits[upload.name].append(inprocess_limit(upload, args.seconds))

    print("[service] gunicorn, default settings (MMAX_WORKERS automatic: one per core as memory allows), "
          "each upload between two measurements of its limit", flush=True)
    service = serve_and_measure([str(Path(python).with_name("gunicorn")), "app:create_app()"], env, uploads,
                                args.seconds, beside=measure_limit)
    requests_ = {upload.name: {"model": upload.model, "pixels": upload.pixels, **mean_limit(limits[upload.name])}
                 for upload in uploads}
    print("[service] gunicorn, MMAX_WORKERS=1 (one interpreter, the forward passes on every core)", flush=True)
    one_worker = serve_and_measure([str(Path(python).with_name("gunicorn")), "app:create_app()"],
                                   {**env, "MMAX_WORKERS": "1"}, uploads, args.seconds, (1, 8))
    print("[peer] BentoML, adaptive batching (bench/bentoml_peer.py)", flush=True)
    bentoml = serve_and_measure(bentoml_command(), {**env, "BENTOML_HOME": str(ROOT / ".cache" / "bentoml-home"),
                                                    "BENTOML_DO_NOT_TRACK": "True"},
                                uploads, args.seconds, ready_path="/readyz")
    print("[baseline] MAX-style Flask development server", flush=True)
    baseline = serve_and_measure([python, "-m", "bench.max_baseline", "--models", ",".join(models)], env, uploads,
                                 args.seconds)
    for name, record in requests_.items():
        record["service"] = service["uploads"][name]
        record["service_1_worker"] = one_worker["uploads"][name]
        record["peers"] = {"bentoml": bentoml["uploads"][name], "max_style": baseline["uploads"][name]}
        record["service_over_limit"] = {c: round(record["service"][c]["rps"] / record["inprocess_all_cores_rps"], 2)
                                        for c in record["service"]}
    for model_id in models:
        limits = results[model_id]
        limits["limit_images_per_s"] = max(limits["runtimes"][r]["images_per_s"] for r in ("onnx", "tensorflow"))
        limits["forward_ms_batch1"] = min(limits["runtimes"][r]["forward_ms_batch1"] for r in ("onnx", "tensorflow"))
        typical = requests_[model_id]  # the model's first typical upload carries its name
        limits.update({"inprocess_all_cores_rps": typical["inprocess_all_cores_rps"], "service": typical["service"],
                       "peers": typical["peers"], "baseline": typical["peers"]["max_style"]})
    results["requests"] = requests_
    results["startup"] = {"service_ready_s": service["ready_s"], "baseline_ready_s": baseline["ready_s"],
                          "service_rss_mb_per_worker": service["rss_mb_per_worker"],
                          "service_1_worker_rss_mb": one_worker["rss_mb_per_worker"],
                          "bentoml_ready_s": bentoml["ready_s"], "bentoml_rss_mb": bentoml["rss_mb_per_worker"],
                          "baseline_rss_mb": baseline["rss_mb_per_worker"]}
    results["machine"] = {"cpus": os.cpu_count()}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    print("\n| upload | limit req/s (1 process / 1 per core) | clients | service req/s | service / limit "
          "| service p50 / p99 ms | 1 worker req/s | BentoML req/s | BentoML p50 / p99 ms | service / BentoML "
          "| MAX-style req/s | service / MAX-style |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["requests"].items():
        limit = (f"**{r['inprocess_all_cores_rps']}** ({r['one_process']['rps']} / "
                 f"{r['one_process_per_core']['rps']})")
        for clients in CLIENTS:
            s, b = r["service"][str(clients)], r["peers"]["max_style"][str(clients)]
            bento = r["peers"]["bentoml"][str(clients)]
            one = r["service_1_worker"].get(str(clients), {}).get("rps", "")
            print(f"| {name} | {limit if clients == 1 else ''} | {clients} | {s['rps']} | "
                  f"{r['service_over_limit'][str(clients)]:.2f} | {s['p50_ms']} / {s['p99_ms']} | {one} | "
                  f"{bento['rps']} | {bento['p50_ms']} / {bento['p99_ms']} | "
                  f"{s['rps'] / max(bento['rps'], 1e-9):.1f}x | "
                  f"{b['rps']} | {s['rps'] / max(b['rps'], 1e-9):.1f}x |")
    models = [m for m in results if m not in {"requests", "startup", "machine"}]
    print("networks: " + "; ".join(
        f"{m}: {results[m]['limit_images_per_s']} images/s, batch-1 forward {results[m]['forward_ms_batch1']} ms "
        f"(onnx {results[m]['runtimes']['onnx']}, tensorflow {results[m]['runtimes']['tensorflow']})" for m in models))
    print(f"start-up and memory: {json.dumps(results['startup'])}")


if __name__ == "__main__":
    main()
