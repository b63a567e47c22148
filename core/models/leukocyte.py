"""Leukocyte typing: find white blood cells in a stained smear, classify each into four types.

Leukocyte nuclei are the purple objects of a Wright/Giemsa smear: blue well above green, while red cells
and background are pink or pale. Thresholding that difference, merging nuclear lobes and dropping the
small purple platelets finds each leukocyte; a fixed window around it goes to the classifier. Training
uses the very same detection and window (``network_input``), so serving sees what training saw. Where
model.json has a ``measures`` section, a small classifier (a one-hidden-layer perceptron) on what a
haematologist looks at in the same window (core.models.leukocyte_measures) answers too, and the two answers are
combined: their normalised geometric mean, with equal weights (the network and the measures err on different
cells). The result is temperature-scaled (model.json ``inference.temperature``, fitted on validation cells); a
cell whose top probability is below ``min_confidence`` is marked uncertain (its best label is still given).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from skimage import filters, measure

from core.imageio import to_rgb8
from core.input_spec import InputSpec
from core.model_base import MicroscopyModel
from core.models.leukocyte_measures import MEASURE_NAMES, STAIN_FLOOR, cell_measures
from core.morphology import close_disk, dilate_disk
from core.options import Option


@dataclass(frozen=True)
class Leukocyte:
    bbox: tuple[int, int, int, int]  # x, y, width, height
    centre: tuple[float, float]      # x, y
    area: int


def find_leukocytes(rgb: np.ndarray, min_area: int) -> list[Leukocyte]:
    """Leukocytes of an RGB smear image, top to bottom; ``min_area`` (px) separates them from platelets."""
    signed = rgb.astype(np.int16)
    stain = signed[..., 2] - signed[..., 1]
    if stain.max() <= STAIN_FLOOR:
        return []
    threshold = max(float(filters.threshold_otsu(stain)), STAIN_FLOOR)
    mask = dilate_disk(close_disk(stain > threshold, 3), 6)  # the dilation joins the lobes of one nucleus
    found = []
    for region in measure.regionprops(measure.label(mask)):
        if region.area < min_area:
            continue
        top, left, bottom, right = region.bbox
        # The mask covers the nucleus; a margin of a fifth of its size takes in the cytoplasm.
        margin_x, margin_y = round(0.2 * (right - left)), round(0.2 * (bottom - top))
        x0, y0 = max(0, left - margin_x), max(0, top - margin_y)
        x1, y1 = min(rgb.shape[1], right + margin_x), min(rgb.shape[0], bottom + margin_y)
        cy, cx = region.centroid
        found.append(Leukocyte((x0, y0, x1 - x0, y1 - y0), (cx, cy), int(region.area)))
    return sorted(found, key=lambda cell: (cell.centre[1], cell.centre[0]))


def crop_window(rgb: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
    """A size×size window centred on ``centre``; outside the image is black, as in the training crops. Only the
    window is allocated (a padded copy of the whole image per cell would cost ~30 MB each on an 8000² upload)."""
    x0, y0 = round(centre[0]) - size // 2, round(centre[1]) - size // 2
    window = np.zeros((size, size, rgb.shape[2]), rgb.dtype)
    inside = rgb[max(0, y0):max(0, y0 + size), max(0, x0):max(0, x0 + size)]
    window[max(0, -y0):max(0, -y0) + inside.shape[0], max(0, -x0):max(0, -x0) + inside.shape[1]] = inside
    return window


@dataclass(frozen=True)
class LeukocyteInput(InputSpec):
    example_sizes: list[str]     # upload sizes the model was made for, in words
    window_px: int               # the window around a leukocyte the network sees
    min_nucleus_area_px: int     # smaller purple objects are platelets


def geometric_mean(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Rows of two classifiers' probabilities combined: the normalised geometric mean of each row."""
    combined = np.sqrt(np.clip(first, 1e-12, 1.0) * np.clip(second, 1e-12, 1.0))
    return combined / combined.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Found:
    """What preprocess found in an upload, for postprocess."""
    cells: list[Leukocyte]
    scale: float
    measures: np.ndarray  # cells × measures (core.models.leukocyte_measures); no columns when not used


class LeukocyteModel(MicroscopyModel):
    Input = LeukocyteInput
    #: model.json ``measures``: the classifier on measures, combined with the network
    companions = ("measures",)
    options = (
        Option("scale", float,
               "resize factor that brings the upload to the model's scale (a red cell about 40 px across; "
               "0.5 for 640x480 BCCD fields)", minimum=0.1, maximum=4.0),
        Option("min_confidence", float, "a cell whose top probability is below this is marked uncertain "
               "(its best label is still given)", minimum=0.0, maximum=1.0),
    )

    def preprocess(self, inputs: Image.Image, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        scale = options["scale"]
        image = inputs
        if scale != 1.0:
            size = (max(1, round(inputs.width * scale)), max(1, round(inputs.height * scale)))
            image = inputs.resize(size, Image.Resampling.BILINEAR)
        rgb = to_rgb8(image)
        cells = find_leukocytes(rgb, self.input.min_nucleus_area_px)
        batch = np.stack([crop_window(rgb, cell.centre, self.input.window_px) for cell in cells]) if cells \
            else np.zeros((0, self.input.window_px, self.input.window_px, 3), np.uint8)
        measures = self.measures_of(batch) if self.companion_forward("measures") else np.zeros((len(cells), 0))
        return batch.astype(np.float32), Found(cells, scale, measures)

    def predict(self, inputs: Image.Image, options: dict[str, Any]) -> dict[str, Any]:
        batch, found = self.preprocess(inputs, options)
        probabilities = self.combined(self.run_network(batch), found.measures)
        return self.postprocess(self.calibrated(probabilities), found, options)

    @staticmethod
    def measures_of(windows: np.ndarray) -> np.ndarray:
        """The measures of each window's central cell (rows × measures, float32)."""
        return np.stack([cell_measures(np.asarray(window, np.uint8)) for window in windows]) if len(windows) \
            else np.zeros((0, len(MEASURE_NAMES)), np.float32)

    def combined(self, network_probabilities: np.ndarray, measures: np.ndarray) -> np.ndarray:
        """The network's probabilities combined with the measure classifier's (when the model has one)."""
        classify = self.companion_forward("measures")
        if classify is None or not len(network_probabilities):
            return network_probabilities
        return geometric_mean(network_probabilities, classify(np.asarray(measures, np.float32)))

    def postprocess(self, probabilities: np.ndarray, context: Found, options: dict[str, Any]) -> dict[str, Any]:
        cells, scale = context.cells, context.scale
        names = self.spec.label_names
        predictions = []
        for cell, per_class in zip(cells, probabilities):
            best = int(np.argmax(per_class))
            x, y, w, h = (round(v / scale) for v in cell.bbox)
            predictions.append({
                "label": names[best],
                "probability": round(float(per_class[best]), 4),
                "bbox": [x, y, w, h],
                "probabilities": {name: round(float(p), 4) for name, p in zip(names, per_class)},
                "uncertain": bool(per_class[best] < options["min_confidence"]),
            })
        counts = {name: sum(p["label"] == name for p in predictions) for name in names}
        return {"predictions": predictions, "counts": counts,
                "uncertain_count": sum(p["uncertain"] for p in predictions)}

    def warm_up_input(self) -> Image.Image:
        image = Image.new("RGB", (320, 240), (225, 190, 200))
        ImageDraw.Draw(image).ellipse([130, 90, 190, 150], fill=(110, 60, 170))
        return image

    def network_input(self, image: Image.Image) -> np.ndarray:
        """The window around the largest leukocyte of a crop (its centre when none is found)."""
        rgb = to_rgb8(image)
        cells = find_leukocytes(rgb, self.input.min_nucleus_area_px)
        centre = max(cells, key=lambda c: c.area).centre if cells else (rgb.shape[1] / 2, rgb.shape[0] / 2)
        return crop_window(rgb, centre, self.input.window_px)


MODEL_CLASS = LeukocyteModel
