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
from core.wsi.slide import required_mpp, slide_mpp


@dataclass
class SlideAnalysis:
    """A whole-slide result: the JSON answer, a heatmap picture and a GeoJSON document."""

    result: dict[str, Any]
    heatmap: Image.Image
    geojson: dict[str, Any]


class SlideModel(ABC):
    """Mixed into a :class:`core.model_base.MicroscopyModel` that takes whole slides (as jobs)."""

    def check_slide(self, slide, options: dict[str, Any]) -> None:
        """Refuse (ClientError) at submission a slide this model could not analyse: by default, one whose
        resolution is neither recorded nor given."""
        required_mpp(slide, options.get("mpp") or None)

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
