"""The interface of a model that analyses whole slides; the local engine, Spark and the CLI use only this.

A slide is planned once (its grid, tissue cells and blocks), each block is analysed on its own pixels (in
this process or on a Spark executor: a block's result must pickle), and the blocks' results are combined
into one :class:`SlideAnalysis`. Uploaded regions use the same path through :func:`core.wsi.slide.image_slide`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from core.wsi.engine import Block, Plan
from core.errors import ImageTooLarge
from core.wsi.slide import required_mpp, slide_mpp


@dataclass
class SlideAnalysis:
    """A whole-slide result: the JSON answer, a heatmap picture and a GeoJSON document."""

    result: dict[str, Any]
    heatmap: Image.Image
    geojson: dict[str, Any]


#: pixels of a slide's smallest level, read whole for the tissue mask and the heatmap (4 bytes each)
MAX_OVERVIEW_PX = 64_000_000
#: grid cells of one job: 8,000 mm² at the mitosis model's 64-µm cells, beyond any slide at its true scale (a
#: wrong mpp is what reaches it: e.g. mpp=50 on a 2,000² image plans 10 million cells)
MAX_JOB_CELLS = 2_000_000


class SlideModel(ABC):
    """Mixed into a :class:`core.model_base.MicroscopyModel` that takes whole slides (as jobs)."""

    #: the domain check's statistics (core.domain), set when the model loads; None: slides are not checked
    domain = None

    def check_slide(self, slide, options: dict[str, Any]) -> None:
        """Refuse (ClientError) at submission a slide this model could not analyse: one whose resolution is
        neither recorded nor given, whose smallest level is too large to read whole (the tissue mask and the
        heatmap are read from it), or whose grid at the model's resolution is beyond MAX_JOB_CELLS."""
        required_mpp(slide, options.get("mpp") or None)
        width, height = slide.level_dimensions[-1]
        if width * height > MAX_OVERVIEW_PX:
            raise ImageTooLarge(f"the slide's smallest level is {width}x{height} px; an overview is read from it "
                                f"whole, and the limit is {MAX_OVERVIEW_PX:,} px - send a pyramidal slide (SVS, "
                                f"tiled TIFF with reduced levels)")
        self.plan(slide, options, MAX_JOB_CELLS)

    def resolution(self, slide, options: dict[str, Any]) -> float:
        """µm per level-0 pixel: the option mpp, else the slide's own, else (an uploaded image) the model's."""
        return slide_mpp(slide, options.get("mpp") or None) or self.input.mpp

    @abstractmethod
    def plan(self, slide, options: dict[str, Any], max_cells: int | None = None) -> Plan:
        """The grid over the slide at the model's resolution (refused beyond ``max_cells``)."""

    @abstractmethod
    def analyse_block(self, pixels: np.ndarray, plan: Plan, block: Block, options: dict[str, Any]) -> Any:
        """One block's finding from its pixels at the model's resolution (margins included)."""

    @abstractmethod
    def slide_analysis(self, slide, plan: Plan, found: list[Any], options: dict[str, Any]) -> SlideAnalysis:
        """The slide's result from every block's finding, in the order of ``plan.blocks``."""
