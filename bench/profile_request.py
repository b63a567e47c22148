"""Where one request's time goes, in-process (no HTTP): the stages of the template, then cProfile's top functions.

    .venv/bin/python -m bench.profile_request leukocyte [--repeats 300] [--top 12]

The stages are timed around the model's own methods (decode = ``read_inputs``, then ``preprocess``, the
network's forward passes, ``postprocess``, the domain check's verdict and the answer's JSON); the rest of
``answer`` is the remainder. Upload names are those of bench/typical_uploads.py. Timings move with machine load.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from bench.typical_uploads import typical_uploads
from config import ROOT

MAX_PIXELS = 64_000_000


def timed(spent: dict[str, float], stage: str, function: Callable) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[stage] += time.perf_counter() - started
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("upload", help="leukocyte, metastasis (the patch), chromosome, protein, "
                                       "'metastasis region' or mitosis")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core import domain
    from core.assets import read_spec
    from core.registry import model_class

    upload = {u.name: u for u in typical_uploads(args.data)}[args.upload]
    model = model_class(upload.model)(read_spec(ROOT / "assets" / upload.model))
    model.configure(runtime="auto", max_batch=1)  # as one request alone meets it in the service
    model.load()
    options = {o.name: o.default for o in model.declared_options()}

    def one() -> None:
        json.dumps(model.answer(model.read_inputs(upload.files, MAX_PIXELS), options))

    one()
    spent: dict[str, float] = defaultdict(float)
    model.read_inputs = timed(spent, "decode", model.read_inputs)
    model.preprocess = timed(spent, "preprocess", model.preprocess)
    model._forward = timed(spent, "network", model._forward)
    model.postprocess = timed(spent, "postprocess", model.postprocess)
    domain.verdict = timed(spent, "domain verdict", domain.verdict)
    dumps = json.dumps
    json.dumps = timed(spent, "answer JSON", dumps)
    started = time.perf_counter()
    for _ in range(args.repeats):
        one()
    total = time.perf_counter() - started
    json.dumps = dumps
    spent["rest of answer (TTA views, calibration, outlines)"] = total - sum(spent.values())
    print(f"{args.upload}: {1000 * total / args.repeats:.2f} ms per request in-process ({args.repeats} requests)")
    print("| stage | ms per request | share |\n|---|---|---|")
    for stage, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"| {stage} | {1000 * seconds / args.repeats:.2f} | {seconds / total:.0%} |")

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.repeats):
        one()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())


if __name__ == "__main__":
    main()
