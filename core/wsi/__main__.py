"""``python -m core.wsi predict SLIDE``: a whole slide through a model, in this process or on Spark.

Writes ``result.json``, ``heatmap.png`` and ``regions.geojson`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from config import ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.wsi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="score one slide")
    predict.add_argument("slide", type=Path, help="a slide file (SVS, tiled TIFF, NDPI, MRXS, ...) or an image")
    predict.add_argument("--model", default="metastasis", help="a model that takes whole slides")
    predict.add_argument("--engine", choices=("local", "spark"), default="local")
    predict.add_argument("--master", default="local[*]", help="Spark master URL (with --engine spark)")
    predict.add_argument("--partitions", type=int, default=None, help="Spark partitions (default: parallelism)")
    predict.add_argument("--assets", type=Path, default=ROOT / "assets")
    predict.add_argument("--out", type=Path, default=Path("wsi-out"))
    predict.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                         help="a model option, e.g. --option mpp=0.5 --option threshold=0.7")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from core.assets import read_spec
    from core.errors import ClientError
    from core.options import parse_options
    from core.registry import model_class
    from core.wsi.engine import analyse_local
    from core.wsi.slide import open_slide
    from core.wsi.slide_model import SlideModel
    from core.wsi.spark import analyse_spark

    try:
        model = model_class(args.model)(read_spec(args.assets / args.model))
        if not isinstance(model, SlideModel):
            raise ClientError(f"model '{args.model}' does not analyse whole slides")
        given = dict(item.partition("=")[::2] for item in args.option)
        options = parse_options(model.declared_options(), given, ignore=set())
        slide = open_slide(args.slide)
        model.check_slide(slide, options)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.engine == "spark":
        analysis = analyse_spark(model, args.slide, args.assets, options, args.master, args.partitions)
    else:
        model.load()
        last = [0.0]

        def progress(fraction: float, note: str) -> None:
            if fraction - last[0] >= 0.1 or fraction >= 1.0:
                last[0] = fraction
                print(f"[progress] {fraction:.0%} {note}", flush=True)

        analysis = analyse_local(model, slide, options, progress)
    args.out.mkdir(parents=True, exist_ok=True)
    analysis.result["engine"] = args.engine
    (args.out / "result.json").write_text(json.dumps(analysis.result))
    analysis.heatmap.save(args.out / "heatmap.png")
    (args.out / "regions.geojson").write_text(json.dumps(analysis.geojson))
    print(f"[done] {args.engine} engine, {time.perf_counter() - started:.1f} s; "
          f"{json.dumps(analysis.result['predictions'][:5])}; wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
