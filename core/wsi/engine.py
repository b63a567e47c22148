"""Tile-grid scoring of a slide, block by block, identical whichever engine runs the blocks.

A scorer sees ``window_px`` windows at ``mpp`` µm/px, one per grid cell of ``cell_px`` (the window centred
on its cell). The slide is read at the pyramid level nearest above the scorer's resolution, a block of
cells at a time (one read, one resize, then windows are slices), and only cells with tissue are scored.
Every block is analysed on its own pixels by the model (:class:`core.wsi.slide_model.SlideModel`), so the
local and the Spark engine give the same numbers.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

from core import deadline, domain
from core.errors import ClientError
from core.wsi.checkpoint import BlockCheckpoint
from core.wsi.tissue import cell_fractions, tissue_mask

if TYPE_CHECKING:
    from core.wsi.slide_model import SlideAnalysis, SlideModel

Scorer = Callable[[np.ndarray], np.ndarray]  # uint8 N×window×window×3 → float N
Progress = Callable[[float, str], None]

THUMBNAIL_PX = 2048       # longest side of the thumbnail the tissue mask is computed on
BLOCK_CELLS = 16          # cells per block side: one slide read per block
MIN_TISSUE_FRACTION = 0.1  # a cell is scored when at least this share of it is tissue


@dataclass(frozen=True)
class TileSpec:
    mpp: float       # µm/px the scorer expects
    window_px: int   # the scorer's input side
    cell_px: int     # grid step at the scorer's resolution (the part of the window a score speaks for)


@dataclass(frozen=True)
class Block:
    row: int
    col: int
    rows: int
    cols: int


@dataclass
class Plan:
    spec: TileSpec
    slide_mpp: float
    level: int
    rows: int
    cols: int
    tissue: np.ndarray        # rows×cols bool: cells that will be scored
    blocks: list[Block] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """Scorer pixels per level-0 pixel."""
        return self.slide_mpp / self.spec.mpp

    @property
    def cell_level0(self) -> float:
        """A cell's side in level-0 pixels."""
        return self.spec.cell_px / self.scale


def plan_slide(slide, spec: TileSpec, slide_mpp: float, tissue_only: bool = True,
               max_cells: int | None = None) -> Plan:
    """The grid over the slide, its tissue cells and the blocks to score; refuses grids over ``max_cells``."""
    width, height = slide.dimensions
    scale = slide_mpp / spec.mpp
    if not spec.cell_px / scale <= 4 * max(width, height):  # also catches an mpp so small it overflows
        raise ClientError(f"at {slide_mpp:g} um/px one grid cell ({spec.cell_px * spec.mpp:g} um) would be more than four "
                          f"times the whole {width}x{height} image; check the option mpp")
    cols, rows = max(1, math.ceil(width * scale / spec.cell_px)), max(1, math.ceil(height * scale / spec.cell_px))
    if max_cells is not None and rows * cols > max_cells:
        raise ClientError(f"the image is {rows}x{cols} = {rows * cols:,} grid cells at {spec.mpp} um/px; the limit "
                          f"here is {max_cells:,} (check the option mpp; a larger region goes as a whole-slide job)")
    # The level to read: the coarsest one still at least as fine as the scorer (downsample, never upsample).
    fine_enough = [level for level, downsample in enumerate(slide.level_downsamples)
                   if slide_mpp * downsample <= spec.mpp * 1.01]
    level = max(fine_enough) if fine_enough else 0
    if tissue_only:
        tissue = tissue_cells(slide, rows, cols, rows * spec.cell_px / scale, cols * spec.cell_px / scale)
    else:
        tissue = np.ones((rows, cols), bool)
    blocks = [Block(r, c, min(BLOCK_CELLS, rows - r), min(BLOCK_CELLS, cols - c))
              for r in range(0, rows, BLOCK_CELLS) for c in range(0, cols, BLOCK_CELLS)]
    blocks = [b for b in blocks if tissue[b.row:b.row + b.rows, b.col:b.col + b.cols].any()]
    return Plan(spec, slide_mpp, level, rows, cols, tissue, blocks)


def tissue_cells(slide, rows: int, cols: int, grid_height: float, grid_width: float) -> np.ndarray:
    """Cells holding tissue, from a thumbnail; the grid may reach past the slide's edge (no tissue there)."""
    width, height = slide.dimensions
    thumbnail = np.asarray(slide.get_thumbnail((THUMBNAIL_PX, THUMBNAIL_PX)).convert("RGB"))
    mask = tissue_mask(thumbnail)
    pad_y = max(0, round(mask.shape[0] * grid_height / height) - mask.shape[0])
    pad_x = max(0, round(mask.shape[1] * grid_width / width) - mask.shape[1])
    mask = np.pad(mask, ((0, pad_y), (0, pad_x)))
    return cell_fractions(mask, rows, cols) >= MIN_TISSUE_FRACTION


def read_block(slide, plan: Plan, block: Block) -> np.ndarray:
    """The block's pixels at the scorer's resolution, with the windows' margins (outside the slide: white)."""
    spec, scale = plan.spec, plan.scale
    margin = (spec.window_px - spec.cell_px) / 2
    out_w = block.cols * spec.cell_px + 2 * round(margin)
    out_h = block.rows * spec.cell_px + 2 * round(margin)
    x0 = (block.col * spec.cell_px - round(margin)) / scale  # level-0 pixels
    y0 = (block.row * spec.cell_px - round(margin)) / scale
    downsample = float(slide.level_downsamples[plan.level])
    size = (max(1, math.ceil(out_w / scale / downsample)), max(1, math.ceil(out_h / scale / downsample)))
    region = slide.read_region((math.floor(x0), math.floor(y0)), plan.level, size)
    white = Image.new("RGBA", region.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, region.convert("RGBA")).convert("RGB")
    return np.asarray(rgb.resize((out_w, out_h), Image.Resampling.BILINEAR))


def score_cells(pixels: np.ndarray, plan: Plan, block: Block, scorer: Scorer) -> np.ndarray:
    """Scores of one block's tissue cells from its pixels (rows×cols; NaN where there is no tissue)."""
    spec = plan.spec
    tissue = plan.tissue[block.row:block.row + block.rows, block.col:block.col + block.cols]
    scores = np.full(tissue.shape, np.nan, np.float32)
    cells = np.argwhere(tissue)
    if len(cells):
        windows = np.stack([pixels[r * spec.cell_px:r * spec.cell_px + spec.window_px,
                                   c * spec.cell_px:c * spec.cell_px + spec.window_px] for r, c in cells])
        scores[tissue] = np.asarray(scorer(windows), np.float32).reshape(-1)
    return scores


def assemble(plan: Plan, block_grids: list[np.ndarray]) -> np.ndarray:
    """The rows×cols grid from every block's grid (in the order of ``plan.blocks``)."""
    grid = np.full((plan.rows, plan.cols), np.nan, np.float32)
    for block, scores in zip(plan.blocks, block_grids):
        grid[block.row:block.row + block.rows, block.col:block.col + block.cols] = scores
    return grid


def analyse_block(model: SlideModel, slide, plan: Plan, block: Block, options: dict[str, Any]
                  ) -> tuple[Any, float | None]:
    """One block's finding, and its domain statistic (None: no check, or nothing reached the network)."""
    with domain.recording() as seen:
        finding = model.analyse_block(read_block(slide, plan, block), plan, block, options)
    rows = seen.rows
    return finding, (model.domain.statistic(rows) if model.domain is not None and rows is not None else None)


def analyse_blocks(model: SlideModel, slide, plan: Plan, options: dict[str, Any],
                   progress: Progress | None = None, statistics: list[float | None] | None = None,
                   checkpoint: BlockCheckpoint | None = None) -> list[Any]:
    """Every block's finding, in this process, reporting progress after each (and appending each block's
    domain statistic to ``statistics`` when given). With a ``checkpoint``, blocks a previous attempt
    finished are taken from it and each block finished now is added to it."""
    earlier = checkpoint.load() if checkpoint else {}
    if checkpoint:
        checkpoint.start(earlier)
    kept = f" ({len(earlier):,} blocks kept from the previous attempt)" if earlier else ""
    total, done, found = max(1, int(plan.tissue.sum())), 0, []
    for index, block in enumerate(plan.blocks):
        deadline.check()  # a synchronous region request over its time budget stops here
        if index in earlier:
            finding, statistic = earlier[index]
        else:
            finding, statistic = analyse_block(model, slide, plan, block, options)
            if checkpoint:
                checkpoint.add(index, finding, statistic)
        found.append(finding)
        if statistics is not None:
            statistics.append(statistic)
        done += int(plan.tissue[block.row:block.row + block.rows, block.col:block.col + block.cols].sum())
        if progress:
            progress(done / total, f"analysed {done:,} of {total:,} tissue tiles{kept}")
    return found


def plan_key(model: SlideModel, plan: Plan, options: dict[str, Any]) -> str:
    """What a block's finding depends on besides its pixels: the model's weights, the grid and the options."""
    tissue = hashlib.sha256(np.packbits(plan.tissue).tobytes()).hexdigest()[:16]
    return json.dumps({"model": model.spec.id, "weights": model.spec.meta.get("weights", {}).get("sha256"),
                       "level": plan.level, "grid": [plan.rows, plan.cols], "blocks": len(plan.blocks),
                       "tissue": tissue, "options": options}, sort_keys=True, default=str)


def checked_analysis(model: SlideModel, slide, plan: Plan, found: list[Any], statistics: list[float | None],
                     options: dict[str, Any]) -> SlideAnalysis:
    """The model's slide analysis with the slide's ``domain`` verdict (models with a domain check)."""
    analysis = model.slide_analysis(slide, plan, found, options)
    if model.domain is not None:
        tissue = [int(plan.tissue[b.row:b.row + b.rows, b.col:b.col + b.cols].sum()) for b in plan.blocks]
        analysis.result["domain"] = domain.slide_verdict(model.domain, statistics, tissue, model.spec.id)
    return analysis


def analyse_local(model: SlideModel, slide, options: dict[str, Any], progress: Progress | None = None,
                  checkpoint_path: Path | None = None) -> SlideAnalysis:
    """A whole slide through ``model`` in this process (the Spark engine: core.wsi.spark); with a
    ``checkpoint_path``, resumed from the blocks an earlier attempt finished (core.wsi.checkpoint)."""
    plan = model.plan(slide, options)
    statistics: list[float | None] = []
    checkpoint = BlockCheckpoint(checkpoint_path, plan_key(model, plan, options)) if checkpoint_path else None
    found = analyse_blocks(model, slide, plan, options, progress, statistics, checkpoint)
    return checked_analysis(model, slide, plan, found, statistics, options)
