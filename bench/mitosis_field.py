"""A 2,000×2,000 high-power field: the mitosis detector against dense sliding-window classification.

The field is a mosaic of 128×128 crops of slides the shipped model never saw (model.json's held-out slides),
so every mitosis in it is known. Both methods use the same classifier, test-time augmentation, threshold
and duplicate merging; they differ only in where windows are centred: on candidate nuclei (the detector)
or every ``--stride`` pixels (dense). Time and F1 (30-px rule, one-to-one) of each are measured side by
side in one run; the subtype classifier's time on what each found is reported apart (the same per figure).
Writes bench/mitosis_field.json.

    .venv/bin/python -m bench.mitosis_field [--data DIR] [--stride 16] [--fields 1] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from config import ROOT

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FIELD_PX = 2000


def held_out_fields(model, data: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` fields of FIELD_PX², each tiled from held-out crops (slide by slide), with their true figures."""
    from core.imageio import to_rgb8
    from core.models.mitosis_training import crops, mosaic

    held_out = set(model.spec.meta["metrics"]["detection"]["per_group"])
    chosen = sorted((crop for crop in crops(data) if crop[1].slide in held_out), key=lambda crop: crop[1].slide)
    side = -(-FIELD_PX // 128)
    fields = []
    for index in range(count):
        chunk = chosen[index * side * side:(index + 1) * side * side]
        if len(chunk) < side * side:
            break
        field, truth = mosaic(chunk, {path: to_rgb8(Image.open(path)) for path, _, _ in chunk}, side)
        inside = (truth < FIELD_PX).all(axis=1)
        fields.append((field[:FIELD_PX, :FIELD_PX].copy(), truth[inside]))
    return fields


def score(model, rgb: np.ndarray, truth: np.ndarray, threshold: float, centres_of, repeats: int) -> dict:
    """Detection (windows, classifier, merging) and then subtyping of what it found, timed apart: the
    methods differ in detection only; subtyping costs the same per figure found."""
    from core.evaluation import f1_counts, match_points

    detecting, subtyping = [], []
    for _ in range(repeats):  # the fastest of a few runs: the least disturbed by other work on the machine
        started = time.perf_counter()
        found = model.detect(rgb, threshold, centres_of, subtype=False)
        detected = time.perf_counter()
        model.assign_subtypes(rgb, found)
        detecting.append(detected - started)
        subtyping.append(time.perf_counter() - detected)
    points = np.array([(m["y"], m["x"]) for m in found], float).reshape(-1, 2)
    hits = len(match_points(points, truth, model.input.match_px))
    return {"seconds": min(detecting), "subtype_seconds": min(subtyping), "found": len(found),
            "windows": len(centres_of(rgb)), **f1_counts(hits, len(found) - hits, len(truth) - hits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/mitosis")
    parser.add_argument("--stride", type=int, default=16, help="dense sliding window: pixels between windows")
    parser.add_argument("--fields", type=int, default=1,
                        help="how many 2,000x2,000 fields to measure (the held-out crops fill one)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method and field (fastest kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "mitosis_field.json")
    args = parser.parse_args()

    from core.assets import read_spec
    from core.evaluation import f1_counts
    from core.models.mitosis import dense_centres, propose
    from core.registry import model_class

    model = model_class("mitosis")(read_spec(ROOT / "assets" / "mitosis"))
    model.load()
    model.warm_up()
    threshold = next(option.default for option in model.declared_options() if option.name == "threshold")
    methods = {"detector (candidate nuclei)": lambda rgb: propose(rgb, model.input.proposals),
               f"dense sliding window (stride {args.stride} px)": lambda rgb: dense_centres(rgb.shape, args.stride)}
    rows = []
    for index, (rgb, truth) in enumerate(held_out_fields(model, args.data, args.fields)):
        for name, centres_of in methods.items():
            row = {"field": index, "method": name, "true": len(truth),
                   **score(model, rgb, truth, threshold, centres_of, args.repeats)}
            rows.append(row)
            print(f"field {index} {name}: {row['windows']:,} windows, detection {row['seconds']:.1f} s, subtypes of "
                  f"{row['found']} found {row['subtype_seconds']:.1f} s, F1 {row['f1']:.3f} (P {row['precision']:.3f}, "
                  f"R {row['recall']:.3f}, {row['true']} true)", flush=True)
    summary = {}
    for name in methods:
        mine = [row for row in rows if row["method"] == name]
        pooled = f1_counts(*(sum(row[k] for row in mine) for k in ("tp", "fp", "fn")))
        summary[name] = {"seconds_per_field": round(float(np.mean([row["seconds"] for row in mine])), 2),
                         "subtype_seconds_per_field": round(float(np.mean([row["subtype_seconds"] for row in mine])), 2),
                         "windows_per_field": int(np.mean([row["windows"] for row in mine])),
                         **{k: pooled[k] for k in ("f1", "precision", "recall")}}
    detector, dense = (summary[name] for name in methods)
    result = {"field_px": FIELD_PX, "fields": len(rows) // 2, "tta": model.uses_tta, "threshold": threshold,
              "runtime": model.runtime, "cpu_count": os.cpu_count(), "methods": summary,
              "dense_over_detector_time": round(dense["seconds_per_field"] / detector["seconds_per_field"], 2),
              "with_subtypes": round((dense["seconds_per_field"] + dense["subtype_seconds_per_field"])
                                     / (detector["seconds_per_field"] + detector["subtype_seconds_per_field"]), 2),
              "rows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"dense / detector time: {result['dense_over_detector_time']}x (with subtyping "
          f"{result['with_subtypes']}x); F1 detector {detector['f1']}, dense "
          f"{dense['f1']}; wrote {args.out}")


if __name__ == "__main__":
    main()
