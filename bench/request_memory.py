"""Each model's peak memory per pixel of a large request: the figure the memory budget estimates with.

For each model, in a process of its own: load it, answer a large upload once (pools and caches reach their
working size), then answer it again while a thread samples the process's resident memory every 5 ms. The
peak above the level before the second answer, per pixel the request holds (``working_pixels``), times
MARGIN, is written to model.json ``inference.memory_bytes_per_pixel`` (core.memory reads it) and with the raw
figures to bench/request_memory.json.

    .venv/bin/python -m bench.request_memory [--models leukocyte,mitosis]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

from config import ROOT

OUT = ROOT / "bench" / "request_memory.json"
MARGIN = 1.25  # content varies (more cells, more candidates): the estimate errs on the safe side
MODELS = ("leukocyte", "chromosome", "metastasis", "mitosis", "protein")


def large_upload(model_id: str) -> dict[str, bytes]:
    """A large upload of the kind each model takes (made here: no shared data needed)."""
    from PIL import Image

    from tests.images import encode, hpa_field, section, smear, spread

    if model_id == "leukocyte":
        return {"image": encode(smear((4000, 3000), leukocytes=[(x, y, 30) for x in range(100, 4000, 200)
                                                                  for y in range(100, 3000, 200)]))}
    if model_id == "chromosome":
        rods = [(x, y, 60, angle) for x in range(100, 3000, 150) for y, angle in ((300, 20), (900, 70))]
        return {"image": encode(spread((3000, 2000), rods=rods))}
    if model_id in ("metastasis", "mitosis"):
        return {"image": encode(Image.fromarray(section((4096, 4096))), "JPEG")}
    channels = hpa_field((2048, 2048), cells=[(x, y) for x in range(150, 2048, 300) for y in range(150, 2048, 300)],
                         radius=100)
    return {name: encode(image) for name, image in channels.items()}


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(model_id: str) -> dict:
    """In this process: the peak bytes above the level before the answer, per working pixel."""
    from core.assets import read_spec
    from core.registry import model_class

    model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
    model.load()
    uploads = large_upload(model_id)
    options = {option.name: option.default for option in model.declared_options()}
    inputs = model.read_inputs(uploads, 64_000_000)
    working = model.working_pixels(inputs, options)
    model.answer(inputs, options)  # pools and caches at their working size
    before, peak, done = resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    model.answer(inputs, options)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    extra = max(0, peak[0] - before)
    return {"working_pixels": working, "peak_above_before_mb": round(extra / 2**20, 1),
            "bytes_per_pixel": round(extra / working, 2), "seconds": round(seconds, 2),
            "memory_bytes_per_pixel": max(1, math.ceil(extra / working * MARGIN))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure this model, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    from core.assets import read_spec, write_meta

    results = {}
    for model_id in args.models.split(","):
        run = subprocess.run([sys.executable, "-m", "bench.request_memory", "--one", model_id], cwd=ROOT,
                             capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if run.returncode:
            raise SystemExit(f"{model_id}: {run.stderr[-2000:]}")
        results[model_id] = json.loads(run.stdout.strip().splitlines()[-1])
        print(model_id, results[model_id], flush=True)
        spec = read_spec(ROOT / "assets" / model_id)
        spec.meta.setdefault("inference", {})["memory_bytes_per_pixel"] = results[model_id]["memory_bytes_per_pixel"]
        write_meta(spec.directory, spec.meta)
    OUT.write_text(json.dumps({"margin": MARGIN, "models": results, "cpu_count": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
