"""Lymph-node metastasis: tumour probability of H&E patches, tiled into heatmaps over regions and slides.

The network is trained on PatchCamelyon: a 96×96 patch at about 0.97 µm/px is "tumor" when its central
32×32 holds tumour. Regions and slides are therefore scored on a grid of 32-px cells, each seen through the
96-px window around it (the whole-slide engine in ``core.wsi``), so every grid value means what a label meant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from core.imageio import resize_bilinear, to_rgb8
from core.input_spec import InputSpec
from core.model_base import MicroscopyModel
from core.options import Option
from core.wsi import engine, outputs
from core.wsi.slide import image_slide
from core.wsi.slide_model import SlideAnalysis, SlideModel

TUMOR_COLOUR = (200, 30, 30)
#: the largest grid a synchronous predict call scores (about 4,000x4,000 px at 0.97 um/px); more is a job
MAX_REGION_CELLS = 16_384


@dataclass(frozen=True)
class MetastasisInput(InputSpec):
    mpp: float        # µm/px the network was trained at
    window_px: int    # the patch side the network sees (scaled to network_input)
    centre_px: int    # the central part a patch's label speaks for: the grid step


class MetastasisModel(MicroscopyModel, SlideModel):
    options = (
        Option("mpp", float, "micrometres per pixel of the upload or slide; 0: a slide's own "
               "(openslide.mpp-x), for images the model's 0.97", minimum=0.0, maximum=50.0),
        Option("threshold", float, "tumour probability at or above which a grid cell joins a tumour "
               "region", minimum=0.0, maximum=1.0),
        Option("tissue_only", bool, "score only grid cells where the tissue mask (Otsu on saturation) "
               "finds tissue"),
    )
    formats = ("json", "png", "geojson")
    Input = MetastasisInput

    @property
    def positive(self) -> str:
        """The label of PCam's class 1 (tumour in the patch's centre)."""
        return self.spec.label_names[1]

    @property
    def tile_spec(self) -> engine.TileSpec:
        return engine.TileSpec(self.input.mpp, self.input.window_px, self.input.centre_px)

    def score_tiles(self, windows: np.ndarray) -> np.ndarray:
        """Tumour probability of each window at the model's resolution."""
        batch = windows.astype(np.float32)
        if self.input.network_px != self.input.window_px:
            batch = resize_bilinear(batch, self.input.network_px, self.input.network_px)
        return self.run_network(batch)[:, self.spec.label_names.index(self.positive)]

    def ranked(self, positive: float) -> list[dict[str, Any]]:
        """Both labels with their probabilities, the more probable first."""
        pairs = [(self.positive, positive), (self.spec.label_names[0], 1.0 - positive)]
        return [{"label": label, "probability": round(p, 4)} for label, p in sorted(pairs, key=lambda pair: -pair[1])]

    def predict(self, inputs: Image.Image, options: dict[str, Any]) -> dict[str, Any]:
        """One patch: its probabilities. A larger region: the whole-slide grid over it."""
        scale = (options["mpp"] or self.input.mpp) / self.input.mpp
        if max(inputs.size) * scale <= self.input.window_px:
            return super().predict(inputs, options)
        slide = image_slide(inputs)
        plan = self.plan(slide, options, MAX_REGION_CELLS)
        return self.summarise(engine.assemble(plan, engine.analyse_blocks(self, slide, plan, options)), plan, options)

    def summarise(self, grid: np.ndarray, plan: engine.Plan, options: dict[str, Any]) -> dict[str, Any]:
        """Predictions (does it hold tumour: the highest cell), the grid and the tumour regions."""
        mpp = plan.slide_mpp
        found = outputs.regions(grid, options["threshold"], plan.cell_level0, mpp)
        top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0
        return {
            "predictions": self.ranked(top),
            "tumor_regions": found,
            "tumor_area_mm2": round(sum(r["area_mm2"] or 0 for r in found), 4) if mpp else None,
            "grid": {"rows": plan.rows, "cols": plan.cols, "cell_px": round(plan.cell_level0, 3),
                     "cell_um": round(plan.spec.cell_px * plan.spec.mpp, 2),
                     "tissue_cells": int(plan.tissue.sum()), "probabilities": outputs.grid_json(grid)},
        }

    def top_probability(self, result: dict[str, Any]) -> float:
        return next(p["probability"] for p in result["predictions"] if p["label"] == self.positive)

    def render(self, inputs: Image.Image, result: dict[str, Any]) -> Image.Image:
        """The upload under its tumour-probability grid (a patch is a grid of one cell)."""
        top = self.top_probability(result)
        if "grid" in result:
            grid = np.array(result["grid"]["probabilities"], dtype=np.float32)
            extent = (grid.shape[1] * result["grid"]["cell_px"], grid.shape[0] * result["grid"]["cell_px"])
        else:
            grid, extent = np.array([[top]], dtype=np.float32), inputs.size
        return outputs.heatmap_overlay(inputs, grid, extent, f"tumour probability (max {top:.2f})",
                                       "tumour probability")

    def to_geojson(self, result: dict[str, Any]) -> dict[str, Any]:
        return outputs.polygons_geojson(result.get("tumor_regions", []), self.positive.capitalize(), TUMOR_COLOUR)

    # ---- whole slides ------------------------------------------------------------------------------
    def plan(self, slide, options: dict[str, Any], max_cells: int | None = None) -> engine.Plan:
        return engine.plan_slide(slide, self.tile_spec, self.resolution(slide, options), options["tissue_only"],
                                 max_cells)

    def analyse_block(self, pixels: np.ndarray, plan: engine.Plan, block: engine.Block,
                      options: dict[str, Any]) -> np.ndarray:
        return engine.score_cells(pixels, plan, block, self.score_tiles)

    def slide_analysis(self, slide, plan: engine.Plan, found: list[np.ndarray], options: dict[str, Any]
                       ) -> SlideAnalysis:
        grid = engine.assemble(plan, found)
        result = {**outputs.slide_facts(slide, plan), **self.summarise(grid, plan, options)}
        title = f"tumour probability (max {self.top_probability(result):.2f})"
        heatmap = outputs.slide_heatmap(slide, plan, grid, title, "tumour probability")
        return SlideAnalysis(result, heatmap, self.to_geojson(result))

    # ---- a patch -----------------------------------------------------------------------------------
    def network_input(self, image: Image.Image) -> np.ndarray:
        """A patch as the network sees it: its whole field resized to the network's input."""
        side = self.input.network_px
        return to_rgb8(image.resize((side, side), Image.Resampling.BILINEAR))

    def preprocess(self, inputs: Image.Image, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        return self.network_input(inputs)[None].astype(np.float32), None

    def postprocess(self, probabilities: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": self.ranked(float(probabilities[0, self.spec.label_names.index(self.positive)]))}

    def warm_up_input(self) -> Image.Image:
        return Image.new("RGB", (self.input.window_px, self.input.window_px), (220, 160, 200))


MODEL_CLASS = MetastasisModel
