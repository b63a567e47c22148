"""Time of one protein request on 512×512 HPA fields, whole and by step, in-process on this machine.

A request is: decode the four PNG channels → segment → measure every cell → classifier → answer JSON (and,
separately, the PNG picture). The fields are the HPA fields of ``--data`` when there, else synthetic fields
of the same size. Writes bench/protein_field.json.

    .venv/bin/python -m bench.protein_field [--data DIR] [--fields 20]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from config import ROOT

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
CHANNELS = ("red", "green", "blue", "yellow")


def fields(data: Path | None, count: int) -> list[dict[str, bytes]]:
    """``count`` fields as the four uploaded PNG files."""
    if data is not None and (data / "images").is_dir():
        ids = sorted({p.name.rsplit("_", 1)[0] for p in (data / "images").glob("*_blue.png")})[:count]
        return [{c: (data / "images" / f"{i}_{c}.png").read_bytes() for c in CHANNELS} for i in ids]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        yy, xx = np.mgrid[:512, :512]
        planes = np.zeros((4, 512, 512), np.float32)
        for cx, cy in rng.uniform(40, 472, (20, 2)):
            r = np.hypot(xx - cx, yy - cy)
            planes[2] += 0.8 * (r < 15)
            planes[[0, 1, 3]] += 0.4 * (r < 38) * rng.uniform(0.3, 1.0, (3, 1, 1))
        encoded = {}
        for name, plane in zip(CHANNELS, np.clip(planes, 0, 1)):
            buffer = io.BytesIO()
            Image.fromarray((plane * 255).astype(np.uint8)).save(buffer, "PNG")
            encoded[name] = buffer.getvalue()
        out.append(encoded)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "protein" / "hpa2018")
    parser.add_argument("--fields", type=int, default=20)
    args = parser.parse_args()

    from core.assets import read_spec
    from core.models.protein import ProteinModel
    from core.models.protein_features import cell_features

    model = ProteinModel(read_spec(ROOT / "assets" / "protein"))
    model.configure(max_batch=1)
    model.load()
    options = {o.name: o.default for o in model.declared_options()}
    uploads = fields(args.data if args.data.is_dir() else None, args.fields)
    model.predict(model.read_inputs(uploads[0], 10 ** 8), options)  # warm-up

    steps: dict[str, list[float]] = {k: [] for k in ("decode", "segment", "measure", "classify_and_answer",
                                                       "whole_request_json", "png_picture", "cells")}
    for upload in uploads:
        started = time.perf_counter()
        field = model.read_inputs(upload, 10 ** 8)
        decoded = time.perf_counter()
        channels, cells, nuclei, _ = model.segment(field, options)
        segmented = time.perf_counter()
        cell_features(channels, cells, nuclei)
        measured = time.perf_counter()
        result = model.predict(field, options)  # segment + measure again, then the classifier and the answer
        json.dumps(result)
        answered = time.perf_counter()
        model.render(field, result)
        drawn = time.perf_counter()
        steps["decode"].append(decoded - started)
        steps["segment"].append(segmented - decoded)
        steps["measure"].append(measured - segmented)
        steps["classify_and_answer"].append((answered - measured) - (measured - decoded))
        steps["whole_request_json"].append((decoded - started) + (answered - measured))
        steps["png_picture"].append(drawn - answered)
        steps["cells"].append(result["cell_count"])

    summary = {name: {"median": round(float(np.median(v)), 4), "p95": round(float(np.percentile(v, 95)), 4),
                      "max": round(float(np.max(v)), 4)} for name, v in steps.items()}
    report = {"fields": len(uploads), "source": "HPA 2018 fields" if args.data.is_dir() else "synthetic 512x512",
              "cpu_count": os.cpu_count(), "seconds_per_field": {k: v for k, v in summary.items() if k != "cells"},
              "cells_per_field": summary["cells"], "runtime": model.runtime}
    (ROOT / "bench" / "protein_field.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
