"""The crop-classifier comparison of the chromosome issue, reproduced on the shared data.

Backbone x tl/ft x binary/colour crops x network input size, each cross-validated leaving one whole
spread out (6 folds), with the shared training code; beside it, per spread, the segmentation + classifier
pipeline against the detector, both leaving that spread out (from model.json, written by their training
commands). Writes bench/chromosome_study.{json,md}.

    .venv/bin/python -m bench.chromosome_study [--data DIR] [--weights H5] [--epochs N] [--tables-only]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
from pathlib import Path

from config import ROOT

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/chromosome/metaphases")
    parser.add_argument("--weights", default=str(ROOT.parent / "shared/weights/mobilenet_v1_0.25_224/mobilenet_v1_0.25_224.h5"))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--modes", default="tl,ft")
    parser.add_argument("--styles", default="binary,colour")
    parser.add_argument("--sizes", default="64,32")
    parser.add_argument("--tables-only", action="store_true", help="rewrite the .md from saved figures, train nothing")
    args = parser.parse_args()
    if args.tables_only:
        write_tables(json.loads((ROOT / "bench" / "chromosome_study.json").read_text()))
        return

    from core.training.trainer import TrainSettings, cross_validate

    rows = []
    combos = itertools.product(args.modes.split(","), args.styles.split(","), map(int, args.sizes.split(",")))
    for mode, style, size in combos:
        with tempfile.TemporaryDirectory() as scratch:
            meta = cross_validate(TrainSettings(
                model_id="chromosome", data=args.data, out=Path(scratch) / "chromosome", assets_dir=ROOT / "assets",
                weights=args.weights, mode=mode, epochs=args.epochs, patience=6, folds=6,
                input_overrides={"crop_style": style, "network_input": [size, size, 3]}, cache_dir=ROOT / ".cache" / "training"))
        cv = meta["metrics"]["cross_validation"]
        rows.append({"backbone": "mobilenet_v1_0.25", "mode": mode, "crops": style, "size": size,
                     "accuracy_mean": cv["accuracy"]["mean"], "accuracy_std": cv["accuracy"]["std"],
                     "detection_f1": cv["detection"]["f1"], "count_error_mean": cv["detection"]["count_error_mean"]})
        print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "bench"
    # Rows of earlier invocations stay unless this run measured the same configuration again.
    key = lambda r: (r["backbone"], r["mode"], r["crops"], r["size"])  # noqa: E731
    saved = out / "chromosome_study.json"
    earlier = json.loads(saved.read_text()) if saved.is_file() else []
    rows = [r for r in earlier if key(r) not in {key(n) for n in rows}] + rows
    rows.sort(key=key)
    saved.write_text(json.dumps(rows, indent=2) + "\n")
    write_tables(rows)


def pipeline_comparison(metrics: dict) -> list[str]:
    """Per spread, predicted / true and F1 of both pipelines, each spread left out of its training."""
    old = metrics["cross_validation"]["detection"]
    new = metrics.get("detector")
    if new is None:
        return []
    lines = ["| spread | true | segmentation + classifier: predicted, F1, count error | detector: predicted, F1, "
             "count error |", "|---|---|---|---|"]
    for name in sorted(new["per_spread"]):
        a, b = old["per_group"][name], new["per_spread"][name]
        f1_a = 2 * a["hits"] / (a["predicted"] + a["true"])
        lines.append(f"| {name} | {b['true']} | {a['predicted']}, {f1_a:.3f}, {100 * a['count_error']:.1f} % | "
                     f"{b['predicted']}, {b['f1']:.3f}, {100 * b['count_error']:.1f} % |")
    lines.append(f"| pooled F1; mean (max) count error | | {old['f1']:.3f}; {100 * old['count_error_mean']:.1f} % "
                 f"({100 * old['count_error_max']:.1f} %) | {new['f1']:.3f}; {100 * new['count_error_mean']:.1f} % "
                 f"({100 * new['count_error_max']:.1f} %) |")
    return lines


def write_tables(rows: list[dict]) -> None:
    lines = ["| backbone | mode | crops | input px | crop accuracy (mean ± std, 6 folds) | chromosome F1 | count error |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backbone']} | {r['mode']} | {r['crops']} | {r['size']} | {r['accuracy_mean']:.3f} ± "
              f"{r['accuracy_std']:.3f} | {r['detection_f1']:.3f} | {100 * r['count_error_mean']:.1f} % |" for r in rows]
    comparison = pipeline_comparison(json.loads((ROOT / "assets" / "chromosome" / "model.json").read_text())["metrics"])
    if comparison:
        lines += ["", "Leave-one-spread-out, per spread: the segmentation + crop classifier pipeline against the "
                  "detector (a hit is a box centre inside a true box, one-to-one)", ""] + comparison
    (ROOT / "bench" / "chromosome_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
