"""Whole-slide engines side by side on one large pyramid: in-process vs Spark local[1] vs local[2], tissue tiles/s.

The pyramid is written tile by tile (never whole in memory) as a mosaic of PatchCamelyon patches from the shared
data, scaled to the slide's µm/px; it is kept under .cache/bench and reused. Spark's figures include starting its
executors and loading the model in each (what a job pays). Writes bench/slide_engines.json.

    python -m bench.slide_engines --data ../shared/data/metastasis/pcam [--size 20000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from config import ROOT

TILE = 512
PCAM_MPP = 0.972


def patches(pcam: Path, count: int = 64) -> list[Image.Image]:
    files = sorted((pcam / "valid").glob("*/*.jpg"))[::7][:count]
    if not files:
        raise SystemExit(f"no PatchCamelyon patches under {pcam}/valid")
    return [Image.open(f).convert("RGB") for f in files]


def mosaic_tiles(sources: list[Image.Image], size: int, patch_px: int) -> Iterator[np.ndarray]:
    """The TILE x TILE tiles, row by row, of a size x size mosaic of the sources, each patch_px across."""
    scaled = [np.asarray(p.resize((patch_px, patch_px), Image.BILINEAR)) for p in sources]
    for y in range(0, size, TILE):
        for x in range(0, size, TILE):
            tile = np.empty((TILE, TILE, 3), np.uint8)
            rows = range(y // patch_px, (y + TILE - 1) // patch_px + 1)
            cols = range(x // patch_px, (x + TILE - 1) // patch_px + 1)
            for i in rows:
                for j in cols:
                    patch = scaled[(i * 7919 + j * 104729) % len(scaled)]
                    top, left = i * patch_px - y, j * patch_px - x
                    a, b = max(top, 0), max(left, 0)
                    c, d = min(top + patch_px, TILE), min(left + patch_px, TILE)
                    tile[a:c, b:d] = patch[a - top:c - top, b - left:d - left]
            yield tile


def write_pyramid(path: Path, sources: list[Image.Image], size: int, mpp: float, levels: int = 3) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with tifffile.TiffWriter(partial, bigtiff=True) as tif:
        for index in range(levels):
            factor = 4 ** index
            side = size // factor
            px_per_cm = 1e4 / (mpp * factor)
            tif.write(mosaic_tiles(sources, side, max(4, round(96 * PCAM_MPP / mpp / factor))), shape=(side, side, 3),
                      dtype=np.uint8, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                      resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER", subfiletype=1 if index else 0)
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the PatchCamelyon folder (train/, valid/)")
    parser.add_argument("--size", type=int, default=20000, help="level-0 side in px")
    parser.add_argument("--mpp", type=float, default=0.25, help="level-0 µm/px (0.25: a 40x scan)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "slide_engines.json")
    args = parser.parse_args(argv)

    from core.assets import read_spec
    from core.options import parse_options
    from core.registry import model_class
    from core.wsi.engine import analyse_local
    from core.wsi.slide import open_slide
    from core.wsi.spark import analyse_spark

    slide_path = ROOT / ".cache" / "bench" / f"mosaic_{args.size}_{args.mpp}.tif"
    if not slide_path.exists():
        started = time.perf_counter()
        write_pyramid(slide_path, patches(args.data), args.size, args.mpp)
        print(f"wrote {slide_path.name}: {slide_path.stat().st_size / 2**20:,.0f} MB in "
              f"{time.perf_counter() - started:.0f} s")
    model = model_class("metastasis")(read_spec(ROOT / "assets" / "metastasis"))
    model.load()
    model.warm_up()
    options = parse_options(model.declared_options(), {}, ignore=set())
    plan = model.plan(open_slide(slide_path), options)
    tiles = int(plan.tissue.sum())
    print(f"{tiles:,} tissue tiles of {plan.rows * plan.cols:,}, {len(plan.blocks)} blocks")

    runs = {}
    for name, run in (("in-process", lambda: analyse_local(model, open_slide(slide_path), options)),
                      ("spark local[1]", lambda: analyse_spark(model, slide_path, ROOT / "assets", options, "local[1]")),
                      ("spark local[2]", lambda: analyse_spark(model, slide_path, ROOT / "assets", options, "local[2]"))):
        started = time.perf_counter()
        result = run().result
        seconds = time.perf_counter() - started
        runs[name] = {"seconds": round(seconds, 1), "tiles_per_s": round(tiles / seconds, 1),
                      "grid": result["grid"]["probabilities"]}
        print(f"{name}: {seconds:.1f} s, {tiles / seconds:,.1f} tiles/s")
    reference = np.array(runs["in-process"].pop("grid"), dtype=float)
    for name in ("spark local[1]", "spark local[2]"):
        grid = np.array(runs[name].pop("grid"), dtype=float)
        runs[name]["max_difference_to_in_process"] = float(np.nanmax(np.abs(grid - reference)))
    report = {"slide": {"size_px": args.size, "mpp": args.mpp, "tissue_tiles": tiles, "blocks": len(plan.blocks),
                        "file_mb": round(slide_path.stat().st_size / 2**20)},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "runs": runs,
              "spark_local2_over_local1": round(runs["spark local[1]"]["seconds"] / runs["spark local[2]"]["seconds"], 2)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
