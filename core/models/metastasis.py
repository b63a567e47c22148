"""Lymph-node metastasis: tumour probability of H&E patches, tiled into heatmaps over regions and slides.

The network is trained on PatchCamelyon: a 96×96 patch at about 0.97 µm/px is "tumor" when its central
32×32 holds tumour. Regions and slides are therefore scored on a grid of 32-px cells, each seen through the
96-px window around it (the whole-slide engine in ``core.wsi``), so every grid value means what a label meant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.imageio import to_rgb8
from core.model_base import Example, MicroscopyModel
from core.options import Option
from core.wsi import engine, outputs
from core.wsi.slide import describe, image_slide, required_mpp

TUMOR_COLOUR = (200, 30, 30)
#: the largest grid a synchronous predict call scores (about 4,000x4,000 px at 0.97 um/px); more is a job
MAX_REGION_CELLS = 16_384


def tumor_probability(result: dict[str, Any]) -> float:
    return next(p["probability"] for p in result["predictions"] if p["label"] == "tumor")


class MetastasisModel(MicroscopyModel):
    options = (
        Option("mpp", float, 0.0, "micrometres per pixel of the upload or slide; 0: a slide's own "
               "(openslide.mpp-x), for images the model's 0.97", minimum=0.0, maximum=50.0),
        Option("threshold", float, 0.5, "tumour probability at or above which a grid cell joins a tumour "
               "region", minimum=0.0, maximum=1.0),
        Option("tissue_only", bool, True, "score only grid cells where the tissue mask (Otsu on saturation) "
               "finds tissue"),
    )
    formats = ("json", "png", "geojson")
    rotation_fill = "reflect"  # tissue continues past a patch's edge; black corners would be a shortcut
    takes_slides = True
    batch_size = 64

    @property
    def patch_px(self) -> int:
        return int(self.spec.input["patch_px"])

    @property
    def network_px(self) -> int:
        """The network's input side: patches are scaled from ``patch_px`` to it (ImageNet features prefer
        larger objects than a 96-px patch at 10x shows)."""
        return int(self.spec.input["network_input"][0])

    @property
    def mpp(self) -> float:
        return float(self.spec.input["mpp"])

    @property
    def tile_spec(self) -> engine.TileSpec:
        return engine.TileSpec(self.mpp, self.patch_px, int(self.spec.input["centre_px"]))

    def score_tiles(self, windows: np.ndarray) -> np.ndarray:
        """Tumour probability of each window (the scorer of the whole-slide engine)."""
        batch = windows.astype(np.float32)
        if self.network_px != self.patch_px:
            import keras

            batch = np.asarray(keras.ops.image.resize(batch, (self.network_px, self.network_px),
                                                      interpolation="bilinear", antialias=False))
        return self.run_network(batch)[:, self.spec.label_names.index("tumor")]

    def predict(self, inputs: Image.Image, options: dict[str, Any]) -> dict[str, Any]:
        """One patch: its probabilities. A larger region: the engine's grid over it, as for a slide."""
        mpp = options["mpp"] or self.mpp
        scale = mpp / self.mpp
        if max(inputs.size) * scale <= self.patch_px:
            return super().predict(inputs, options)
        slide = image_slide(inputs)
        plan = engine.plan_slide(slide, self.tile_spec, mpp, options["tissue_only"], MAX_REGION_CELLS)
        grid = engine.score_local(slide, plan, self.score_tiles)
        return self.summarise(grid, plan, mpp, options)

    def summarise(self, grid: np.ndarray, plan: engine.Plan, mpp: float | None, options: dict[str, Any]
                  ) -> dict[str, Any]:
        """Predictions (does it hold tumour: the highest cell), the grid and the tumour regions."""
        found = outputs.regions(grid, options["threshold"], plan.cell_level0, mpp)
        top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0
        pairs = sorted([("tumor", top), ("normal", 1.0 - top)], key=lambda pair: -pair[1])
        return {
            "predictions": [{"label": label, "probability": round(p, 4)} for label, p in pairs],
            "tumor_regions": found,
            "tumor_area_mm2": round(sum(r["area_mm2"] or 0 for r in found), 4) if mpp else None,
            "grid": {"rows": plan.rows, "cols": plan.cols, "cell_px": round(plan.cell_level0, 3),
                     "cell_um": round(plan.spec.cell_px * plan.spec.mpp, 2),
                     "tissue_cells": int(plan.tissue.sum()), "probabilities": outputs.grid_json(grid)},
        }

    def render(self, inputs: Image.Image, result: dict[str, Any]) -> Image.Image:
        """The upload under its tumour-probability grid (a patch is a grid of one cell)."""
        top = tumor_probability(result)
        if "grid" in result:
            grid = np.array(result["grid"]["probabilities"], dtype=np.float32)
            extent = (grid.shape[1] * result["grid"]["cell_px"], grid.shape[0] * result["grid"]["cell_px"])
        else:
            grid, extent = np.array([[top]], dtype=np.float32), inputs.size
        return outputs.heatmap_overlay(inputs, grid, extent, f"tumour probability (max {top:.2f})")

    def to_geojson(self, result: dict[str, Any]) -> dict[str, Any]:
        return outputs.polygons_geojson(result.get("tumor_regions", []), "Tumor", TUMOR_COLOUR)

    # ---- whole slides ------------------------------------------------------------------------------
    def check_slide(self, slide, options: dict[str, Any]) -> None:
        required_mpp(slide, options["mpp"] or None)

    def plan(self, slide, options: dict[str, Any]) -> tuple[engine.Plan, float]:
        mpp = required_mpp(slide, options["mpp"] or None)
        return engine.plan_slide(slide, self.tile_spec, mpp, options["tissue_only"]), mpp

    def analyse_slide(self, slide, options: dict[str, Any], progress: engine.Progress) -> outputs.SlideAnalysis:
        plan, mpp = self.plan(slide, options)
        grid = engine.score_local(slide, plan, self.score_tiles, progress)
        return self.slide_analysis(slide, plan, grid, mpp, options)

    def slide_analysis(self, slide, plan: engine.Plan, grid: np.ndarray, mpp: float, options: dict[str, Any]
                       ) -> outputs.SlideAnalysis:
        """The result, heatmap and GeoJSON of a scored grid, whichever engine scored it."""
        result = {"slide": describe(slide, mpp), "level_read": plan.level, **self.summarise(grid, plan, mpp, options)}
        thumbnail = slide.get_thumbnail((engine.THUMBNAIL_PX, engine.THUMBNAIL_PX)).convert("RGB")
        shrink = thumbnail.width / slide.dimensions[0]
        extent = (plan.cols * plan.cell_level0 * shrink, plan.rows * plan.cell_level0 * shrink)
        title = f"tumour probability (max {tumor_probability(result):.2f})"
        heatmap = outputs.heatmap_overlay(thumbnail, grid, extent, title)
        return outputs.SlideAnalysis(result, heatmap, self.to_geojson(result))

    def preprocess(self, inputs: Image.Image, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        return self.training_input(inputs)[None].astype(np.float32), None

    def postprocess(self, outputs: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        tumor = float(outputs[0, self.spec.label_names.index("tumor")])
        pairs = [("tumor", tumor), ("normal", 1.0 - tumor)]
        return {"predictions": [{"label": label, "probability": round(p, 4)}
                                for label, p in sorted(pairs, key=lambda pair: -pair[1])]}

    def warm_up_input(self) -> Image.Image:
        return Image.new("RGB", (self.patch_px, self.patch_px), (220, 160, 200))

    # ---- training ----------------------------------------------------------------------------------
    def training_examples(self, data_dir: Path) -> list[Example]:
        """PCam's layout: ``{train,valid}/{0,1}/*.jpg`` (0 normal, 1 tumour); each patch its own group."""
        examples = []
        for split in ("train", "valid"):
            for label, name in enumerate(("0", "1")):
                for path in sorted((data_dir / split / name).glob("*")):
                    if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"}:
                        examples.append(Example(path, label, f"{split}/{name}/{path.stem}"))
        return examples

    def training_input(self, image: Image.Image) -> np.ndarray:
        """A patch as the network sees it: its whole field resized to the network's input."""
        return to_rgb8(image.resize((self.network_px, self.network_px), Image.Resampling.BILINEAR))

    def predefined_test(self, groups: np.ndarray) -> np.ndarray | None:
        """PCam's valid patches come from other slides than its train patches: they are the test split."""
        held_out = np.char.startswith(groups.astype(str), "valid/")
        return held_out if held_out.any() and not held_out.all() else None


MODEL_CLASS = MetastasisModel
