"""``make soak``: a few minutes of mixed hostile load against gunicorn as `make run` starts it, on 127.0.0.1.

Eight clients send, in turn: ordinary requests to every model, the largest uploads each model accepts
(an 8000×8000 smear JPEG, a 4096² mitosis field), noise, bytes that are no image, options that ask for too
many pixels or a field of less than a pixel, and an upload trickled a few bytes at a time. Beside them a
probe calls ``/health/live`` twice a second and a sampler reads the service's resident memory (master and
workers). Prints, per kind of request, the answers by status and p50/p99 seconds, then the slowest probe,
peak and final memory; writes bench/soak.json. Exits 1 when a request failed (5xx other than a 503 that
says why, or a dropped connection), a probe took over 1 s, or peak memory passed ``--max-rss-gb``.

    .venv/bin/python -m bench.soak [--seconds 180] [--clients 8] [--max-requests 2000] [--max-rss-gb GB]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import threading
import time

import numpy as np
import requests
from PIL import Image

from bench.serving import children, gunicorn_server, rss_mb, sample_request
from config import ROOT, Config
from core import host

OUT = ROOT / "bench" / "soak.json"


def encoded(image: Image.Image, format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def uploads() -> dict[str, tuple[str, dict, dict]]:
    """Each kind of request: (path, files, form fields)."""
    from tests.images import section, smear

    rng = np.random.default_rng(0)
    noise = encoded(Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)))
    crowded = [(x, y, 30) for x in range(200, 8000, 400) for y in range(200, 8000, 400)]
    large_smear = encoded(smear((8000, 8000), leukocytes=crowded), "JPEG", quality=90)
    field = encoded(Image.fromarray(section((4096, 4096))), "JPEG", quality=90)
    protein = {name: ("c.png", encoded(Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8))))
               for name in ("red", "green", "blue", "yellow")}
    return {
        "leukocyte, typical": ("/model/leukocyte/predict", {"image": ("c.png", sample_request("leukocyte"))}, {}),
        "metastasis, typical": ("/model/metastasis/predict", {"image": ("p.png", sample_request("metastasis"))}, {}),
        "leukocyte, 8000² smear with 400 cells": ("/model/leukocyte/predict", {"image": ("s.jpg", large_smear)}, {}),
        "mitosis, 4096² field": ("/model/mitosis/predict", {"image": ("f.jpg", field)}, {}),
        "chromosome, noise": ("/model/chromosome/predict", {"image": ("n.png", noise)}, {}),
        "protein, noise, scale=4": ("/model/protein/predict", protein, {"scale": "4"}),
        "mitosis, mpp=1e-170": ("/model/mitosis/predict", {"image": ("f.png", noise)}, {"mpp": "1e-170"}),
        "leukocyte, not an image": ("/model/leukocyte/predict", {"image": ("x.png", b"not an image" * 100)}, {}),
    }


def trickled(base: str, body: bytes, seconds: float) -> tuple[int, float]:
    """A leukocyte upload sent in 20 pieces over ``seconds``: (status, seconds to the answer)."""
    host, port = base.removeprefix("http://").split(":")
    boundary = "soak"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\n"
               f"Content-Type: image/png\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /model/leukocyte/predict HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(payload)}\r\n\r\n")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(head.encode())
        step = -(-len(payload) // 20)
        for start in range(0, len(payload), step):
            sock.sendall(payload[start:start + step])
            time.sleep(seconds / 20)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--max-rss-gb", type=float, default=None,
                        help="peak memory allowed (master and workers); default: what the settings give the server, "
                             "each worker MMAX_WORKER_MEMORY_MB + 1 GB (core/host.py), the master 1 GB")
    args = parser.parse_args()
    if args.max_rss_gb is None:
        config = Config.from_env()
        args.max_rss_gb = (config.workers * host.worker_need(config.worker_memory_mb * 2**20) + 2**30) / 2**30
    print("making the uploads ...", flush=True)
    kinds = uploads()
    with gunicorn_server("soak-data") as (base, server):
        return soak(base, server.pid, kinds, args)


def service_rss_mb(master: int) -> float:
    total = 0.0
    for pid in [master, *children(master)]:
        try:
            total += rss_mb(pid)
        except OSError:  # a worker that has just exited
            pass
    return total


def soak(base: str, master: int, kinds: dict, args) -> int:
    lock, stop = threading.Lock(), threading.Event()
    rows: list[dict] = []
    probes: list[float] = []
    memory = {"baseline_mb": service_rss_mb(master), "peak_mb": 0.0}
    sent = [0]
    names = list(kinds) + ["leukocyte, trickled over 5 s"]

    def sample() -> None:
        while not stop.wait(0.5):
            memory["peak_mb"] = max(memory["peak_mb"], service_rss_mb(master))

    def probe() -> None:
        while not stop.wait(0.5):
            started = time.monotonic()
            try:
                ok = requests.get(f"{base}/health/live", timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            probes.append(time.monotonic() - started if ok else float("inf"))

    def request(name: str) -> tuple[int, str]:
        if name.endswith("trickled over 5 s"):
            return trickled(base, kinds["leukocyte, typical"][1]["image"][1], 5.0)[0], ""
        path, files, data = kinds[name]
        response = requests.post(f"{base}{path}", files=files, data=data, timeout=300)
        message = "" if response.status_code == 200 else response.json().get("message", "")[:120]
        return response.status_code, message

    def client(index: int) -> None:
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= args.max_requests:
                    return
                name = names[(sent[0] + index) % len(names)]
                sent[0] += 1
            started = time.monotonic()
            try:
                status, message = request(name)
            except (requests.RequestException, OSError, ValueError) as exc:
                status, message = 0, type(exc).__name__
            with lock:
                rows.append({"kind": name, "status": status, "seconds": time.monotonic() - started,
                             "message": message})

    helpers = [threading.Thread(target=f, daemon=True) for f in (sample, probe)]
    workers = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in helpers + workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    time.sleep(5)  # idle: what the service keeps once the load has gone
    memory["after_idle_mb"] = service_rss_mb(master)
    return report(rows, probes, memory, len(children(master)), args)


def report(rows: list[dict], probes: list[float], memory: dict, workers: int, args) -> int:
    kinds: dict[str, dict] = {}
    for row in rows:
        entry = kinds.setdefault(row["kind"], {"statuses": {}, "seconds": [], "messages": set()})
        entry["statuses"][str(row["status"])] = entry["statuses"].get(str(row["status"]), 0) + 1
        entry["seconds"].append(row["seconds"])
        if row["message"]:
            entry["messages"].add(row["message"])
    failed = [row for row in rows if row["status"] == 0 or (row["status"] >= 500 and row["status"] != 503)]
    print(f"\n{'request':42} {'answers':28} {'p50 s':>7} {'p99 s':>7}")
    summary = {}
    for name, entry in kinds.items():
        p50, p99 = (float(np.percentile(entry["seconds"], q)) for q in (50, 99))
        answers = ", ".join(f"{status}×{count}" for status, count in sorted(entry["statuses"].items()))
        print(f"{name:42} {answers:28} {p50:7.2f} {p99:7.2f}")
        summary[name] = {"statuses": entry["statuses"], "p50_s": round(p50, 3), "p99_s": round(p99, 3),
                         "messages": sorted(entry["messages"])[:3]}
    slowest_probe = max(probes) if probes else float("inf")
    result = {"seconds": args.seconds, "clients": args.clients, "requests": len(rows), "failed": len(failed),
              "kinds": summary, "probes": len(probes), "slowest_probe_s": round(slowest_probe, 3),
              "memory_mb": {key: round(value) for key, value in memory.items()}, "allowed_gb": round(args.max_rss_gb, 1),
              "workers": workers, "cpu_count": os.cpu_count()}
    print(f"\n{len(rows)} requests in {args.seconds:g} s from {args.clients} clients; failed: {len(failed)}")
    print(f"/health/live: {len(probes)} probes, slowest {slowest_probe:.3f} s")
    print(f"memory (master + workers): {memory['baseline_mb']:.0f} MB ready, peak {memory['peak_mb']:.0f} MB "
          f"(allowed {args.max_rss_gb:.1f} GB), {memory['after_idle_mb']:.0f} MB after 5 s idle")
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    ok = not failed and slowest_probe <= 1.0 and memory["peak_mb"] <= args.max_rss_gb * 1024
    print("PASS" if ok else "FAIL", f"(written to {OUT.relative_to(ROOT)})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
