"""How large a forward pass should be: ms per image of each model's main network (ONNX Runtime, as served) in
passes of 1 to 64 images, on one thread (a worker's share of two cores) and on two; what
``MicroscopyModel.rows_per_forward_thread`` rests on. Writes bench/pass_size.json (part of ``make bench``).

    .venv/bin/python -m bench.pass_size [--models metastasis,leukocyte,mitosis] [--threads 1 2]

Best of 3 timings per size; they move with machine load, so compare sizes within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import timeit
from pathlib import Path

import numpy as np

from config import ROOT

SIZES = (1, 8, 16, 32, 64)


def ms_per_image(model_id: str, threads: int) -> dict[str, float]:
    from core import runtime
    from core.assets import read_spec
    from core.registry import model_class

    runtime.limit_threads(threads)
    model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
    model.configure(runtime="onnx", max_batch=1)
    model.load()
    out = {}
    for size in SIZES:
        batch = np.random.default_rng(0).uniform(0, 255, (size, *model.network_input_shape)).astype(np.float32)
        model._forward(batch)  # ONNX Runtime sizes its buffers on the first pass of a shape
        passes = max(3, 400 // size)
        best = min(timeit.repeat(lambda: model._forward(batch), number=passes, repeat=3))
        out[str(size)] = round(1000 * best / (passes * size), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="metastasis,leukocyte,mitosis")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "pass_size.json")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results: dict = {"sizes": list(SIZES), "ms_per_image": {}}
    for model_id in args.models.split(","):
        results["ms_per_image"][model_id] = {}
        for threads in args.threads:
            row = ms_per_image(model_id, threads)
            results["ms_per_image"][model_id][f"{threads}_threads"] = row
            best = min(row, key=row.get)
            print(f"{model_id:12s} {threads} thread(s): " + "  ".join(f"{s}: {ms:.3f}" for s, ms in row.items())
                  + f"  (ms per image by pass size; fastest {best})", flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
