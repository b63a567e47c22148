"""Mitotic figures in H&E at 40x: where each one is, normal or atypical, and how many per mm².

Two stages, as in the TUPAC16 prior art, with a cheaper first stage: candidate nuclei are the local maxima
of the smoothed haematoxylin channel (colour deconvolution, scikit-image's H&E matrix); a patch CNN sees the
64×64 window around each candidate and says non-mitosis / normal / atypical; candidates closer than the
challenge's 30 px are one mitosis (the most probable is kept). Whole slides are read block by block through
``core.wsi.engine`` and analysed the same way, tissue only.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.color import hed_from_rgb
from skimage.feature import peak_local_max

from core.drawing import draw_banner
from core.errors import ClientError
from core.imageio import to_rgb8
from core.input_spec import InputSpec
from core.model_base import MicroscopyModel
from core.options import Option
from core.tta import dihedral_mean
from core.wsi import engine, outputs
from core.wsi.slide_model import SlideAnalysis, SlideModel

#: the largest field (after rescaling to the model's resolution) one predict call analyses; more is a job
MAX_FIELD_PX = 4096 * 4096
#: whole slides: grid cells of this many pixels at the model's resolution (64 µm at 0.25 µm/px)
SLIDE_CELL_PX = 256
#: one high-power field: a 40x objective with field number 22 sees a circle 0.55 mm across (0.2376 mm²).
#: Grading tables give mitoses per 10 HPF for a stated field diameter; mitoses per mm² convert to any other.
HPF_DIAMETER_MM = 0.55
HPF_MM2 = math.pi * (HPF_DIAMETER_MM / 2) ** 2
#: the hotspot the slide result reports: the densest square of 10 HPF's area, where grading counts
HOTSPOT_MM2 = 10 * HPF_MM2


def per_10_hpf(per_mm2: float) -> float:
    """Mitoses per 10 high-power fields of HPF_DIAMETER_MM from mitoses per mm²."""
    return per_mm2 * 10 * HPF_MM2


def hpf_note() -> dict[str, float]:
    return {"field_diameter_mm": HPF_DIAMETER_MM, "area_mm2": round(HPF_MM2, 4)}


# ---- candidates ----------------------------------------------------------------------------------------
def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The haematoxylin channel of an RGB uint8 image, as skimage.color.rgb2hed computes it, in float32."""
    density = np.log(np.maximum(rgb.astype(np.float32) / 255.0, 1e-6)) / np.float32(np.log(1e-6))
    return np.maximum(density @ hed_from_rgb[:, 0].astype(np.float32), 0.0)


def propose(rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Candidate nuclei: (row, col) maxima of the smoothed haematoxylin channel above a floor."""
    smooth = ndi.gaussian_filter(hematoxylin(rgb), params["sigma_px"])
    return peak_local_max(smooth, min_distance=params["min_distance_px"], threshold_abs=params["min_density"],
                          exclude_border=False).astype(np.int64).reshape(-1, 2)


def dense_centres(shape: tuple[int, ...], stride: int) -> np.ndarray:
    """Every ``stride`` pixels over the image: the dense sliding window the candidates replace."""
    rows, cols = np.arange(stride // 2, shape[0], stride), np.arange(stride // 2, shape[1], stride)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)


def windows_at(rgb: np.ndarray, centres: np.ndarray, window: int) -> np.ndarray:
    """``window``-pixel squares centred on ``centres`` (row, col); the image is mirrored past its edges."""
    half = window // 2
    padded = np.pad(rgb, ((half, half), (half, half), (0, 0)), mode="reflect")
    if not len(centres):
        return np.zeros((0, window, window, 3), np.uint8)
    return np.stack([padded[r:r + window, c:c + window] for r, c in centres])


def merge_duplicates(points: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    """Indices kept after non-maximum suppression: the most probable point of every cluster within ``radius``."""
    order = np.argsort(-scores, kind="stable")
    tree, kept, suppressed = cKDTree(points), [], np.zeros(len(points), bool)
    for index in order:
        if suppressed[index]:
            continue
        kept.append(index)
        suppressed[tree.query_ball_point(points[index], radius)] = True
    return np.array(kept, dtype=np.int64)


@dataclass(frozen=True)
class MitosisInput(InputSpec):
    mpp: float                          # µm/px the classifier was trained at
    window_px: int                      # the window around a candidate (scaled to network_input)
    proposals: dict[str, Any]           # candidate nuclei: sigma_px, min_distance_px, min_density
    merge_px: float                     # candidates closer than this are one mitosis
    match_px: float                     # evaluation: a detection this close to a true figure is a hit
    training_sampling: dict[str, Any]   # windows per training crop (core/models/mitosis_training.py)


class MitosisModel(MicroscopyModel, SlideModel):
    options = (
        Option("mpp", float, "micrometres per pixel of the upload or slide; 0: a slide's own "
               "(openslide.mpp-x), for images the model's 0.25 (40x); other values are rescaled",
               minimum=0.0, maximum=10.0),
        Option("threshold", float, "mitosis probability at or above which a candidate is reported "
               "(the default was chosen on validation slides)", minimum=0.0, maximum=1.0),
    )
    formats = ("json", "png", "geojson")
    Input = MitosisInput
    # its fields' forward passes take every core, where larger passes split better among the threads (a field
    # on 2 threads: 0.85-0.87 s in passes of 64 windows, 0.88-1.00 s in passes of 16)
    rows_per_forward_thread = 32

    #: the subtype classifier (model.json ``subtype``); without it the detector's own normal / atypical split answers
    companions = ("subtype",)

    @property
    def subtype_spec(self) -> dict[str, Any] | None:
        return self.spec.meta.get("subtype")

    def subtype_windows(self, rgb: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """The subtype classifier's input: the window round each centre, scaled to its network's side."""
        spec = self.subtype_spec
        side = spec["network_input"][0]
        windows = windows_at(rgb, centres, spec["window_px"])
        return np.stack([np.asarray(Image.fromarray(w).resize((side, side), Image.Resampling.BILINEAR))
                         for w in windows]) if len(windows) else np.zeros((0, side, side, 3), np.uint8)

    def atypical_probability(self, windows: np.ndarray) -> np.ndarray:
        """The subtype classifier's atypical probability, averaged over the 8 dihedral views."""
        subtype = self.companion_forward("subtype")

        def forward(batch: np.ndarray) -> np.ndarray:
            return np.concatenate([subtype(batch[start:start + self.batch_size].astype(np.float32))
                                   for start in range(0, len(batch), self.batch_size)])

        return dihedral_mean(forward, windows)[:, 1] if len(windows) else np.zeros(0, np.float32)

    def assign_subtypes(self, rgb: np.ndarray, found: list[dict[str, Any]]) -> None:
        """With a subtype classifier: each mitosis's subtype from a window centred on it (positions in
        ``rgb``'s pixels); its cut-off for atypical was chosen on the validation slides."""
        if self.companion_forward("subtype") is None or not found:
            return
        centres = np.array([(m["y"], m["x"]) for m in found])
        atypical = self.atypical_probability(self.subtype_windows(rgb, centres))
        for mitosis, p in zip(found, atypical.tolist()):
            is_atypical = p >= self.subtype_spec["atypical_at"]
            mitosis["subtype"] = "atypical" if is_atypical else "normal"
            mitosis["subtype_probability"] = round(p if is_atypical else 1 - p, 4)

    @property
    def subtypes(self) -> list[str]:
        """Every label but the first (non-mitosis): the kinds of mitosis."""
        return self.spec.label_names[1:]

    def colour(self, subtype: str) -> tuple[int, int, int]:
        return tuple(next(label["colour"] for label in self.spec.labels if label["name"] == subtype))

    # ---- a field --------------------------------------------------------------------------------------
    def run_network(self, batch: np.ndarray) -> np.ndarray:
        """Every window once; the 8-view average (model.json ``inference.tta``) only for windows whose single
        view gives at least ``inference.tta_above`` mitosis probability. Most candidates are plainly not
        mitoses; the training command chooses the cut-off on the validation slides (the highest that keeps
        their F1 with every window averaged: model.json ``inference.validation_f1_by_tta_above``)."""
        tta_above = self.spec.meta.get("inference", {}).get("tta_above")
        if not self.uses_tta or tta_above is None or not len(batch):
            return super().run_network(batch)
        probabilities = self._run_batches(batch)
        doubtful = np.flatnonzero(probabilities[:, 1:].sum(axis=1) >= tta_above)
        if len(doubtful):
            probabilities[doubtful] = dihedral_mean(self._run_batches, batch[doubtful])
        return probabilities

    def network_windows(self, rgb: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """The network's input for each centre: the window around it, scaled to the network's side."""
        windows = windows_at(rgb, centres, self.input.window_px)
        if self.input.network_px == self.input.window_px:
            return windows
        size = (self.input.network_px, self.input.network_px)
        return np.stack([np.asarray(Image.fromarray(w).resize(size, Image.Resampling.BILINEAR)) for w in windows]) \
            if len(windows) else np.zeros((0,) + size + (3,), np.uint8)

    def at_model_scale(self, image: Image.Image, mpp: float) -> tuple[np.ndarray, float]:
        """The upload resampled to the model's µm/px, and the factor (model pixels per upload pixel)."""
        scale = mpp / self.input.mpp
        width, height = round(image.width * scale), round(image.height * scale)
        if width < 1 or height < 1:
            raise ClientError(f"at mpp {mpp:g} the field would be {width}x{height} px at the model's {self.input.mpp} "
                              f"um/px: check the option mpp (micrometres per pixel of the upload)")
        if width * height > MAX_FIELD_PX:
            raise ClientError(f"the field is {width}x{height} px at {self.input.mpp} um/px; the limit here is "
                              f"{MAX_FIELD_PX:,} px - send it as a whole-slide job, or check the option mpp")
        if abs(scale - 1) > 0.02:
            image = image.resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR)
        else:
            scale = 1.0
        return to_rgb8(image), scale

    def detect(self, rgb: np.ndarray, threshold: float,
               centres_of: Callable[[np.ndarray], np.ndarray] | None = None, subtype: bool = True
               ) -> list[dict[str, Any]]:
        """Mitoses in an RGB field at the model's resolution: candidates (or ``centres_of(rgb)``), the
        classifier, duplicates merged, then (``subtype``) the subtype classifier on each. Positions in the
        field's pixels, most probable first."""
        centres = propose(rgb, self.input.proposals) if centres_of is None else centres_of(rgb)
        probabilities = self.run_network(self.network_windows(rgb, centres))
        found = self.mitoses(centres, probabilities, threshold)
        if subtype:
            self.assign_subtypes(rgb, found)
        return found

    def mitoses(self, centres: np.ndarray, probabilities: np.ndarray, threshold: float) -> list[dict[str, Any]]:
        mitosis = probabilities[:, 1:].sum(axis=1)
        above = np.flatnonzero(mitosis >= threshold)
        if not len(above):
            return []
        points = centres[above].astype(float)
        tree = cKDTree(points)
        found = []
        for kept in merge_duplicates(points, mitosis[above], self.input.merge_px):
            index = above[kept]
            # The subtype of the whole cluster (its candidates weighted by mitosis probability): steadier than
            # the top candidate's alone (balanced accuracy 0.752 -> 0.762 on the early-stopping slides).
            cluster = above[tree.query_ball_point(points[kept], self.input.merge_px)]
            shares = probabilities[cluster, 1:].sum(axis=0) / max(mitosis[cluster].sum(), 1e-9)
            best = int(np.argmax(shares))
            found.append({"x": int(centres[index, 1]), "y": int(centres[index, 0]),
                          "probability": round(float(mitosis[index]), 4), "subtype": self.subtypes[best],
                          "subtype_probability": round(float(shares[best]), 4)})
        return found

    def subtype_counts(self, found: list[dict[str, Any]]) -> dict[str, int]:
        return {name: sum(m["subtype"] == name for m in found) for name in self.subtypes}

    def preprocess(self, inputs: Image.Image, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        mpp = options["mpp"] or self.input.mpp
        rgb, scale = self.at_model_scale(inputs, mpp)
        centres = propose(rgb, self.input.proposals)
        return self.network_windows(rgb, centres), (rgb, centres, scale, inputs.size, mpp)

    def postprocess(self, probabilities: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        rgb, centres, scale, (width, height), mpp = context
        found = self.mitoses(centres, probabilities, options["threshold"])
        self.assign_subtypes(rgb, found)
        for mitosis in found:  # back to upload pixels
            mitosis["x"], mitosis["y"] = round(mitosis["x"] / scale), round(mitosis["y"] / scale)
        area_mm2 = width * height * mpp * mpp / 1e6
        return {
            "predictions": found,
            "count": len(found),
            "counts": self.subtype_counts(found),
            "mitoses_per_mm2": round(len(found) / area_mm2, 2),
            "mitoses_per_10_hpf": round(per_10_hpf(len(found) / area_mm2), 2),
            "hpf": hpf_note(),
            "field": {"width": width, "height": height, "mpp": mpp, "area_mm2": round(area_mm2, 5)},
            "candidates": len(centres),
        }

    def render(self, inputs: Image.Image, result: dict[str, Any]) -> Image.Image:
        """Circles (30 px at 40x, the matching radius) round each mitosis, coloured by subtype."""
        image = inputs.convert("RGB")
        draw = ImageDraw.Draw(image)
        scale = result["field"]["mpp"] / self.input.mpp
        radius, width = max(6, round(self.input.merge_px / scale)), max(2, round(max(image.size) / 400))
        for mitosis in result["predictions"]:
            x, y = mitosis["x"], mitosis["y"]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=self.colour(mitosis["subtype"]),
                         width=width)
        flagged = self.subtypes[-1]  # the subtype a pathologist looks out for (atypical)
        text = (f"{result['count']} mitoses ({result['counts'][flagged]} {flagged}), "
                f"{result['mitoses_per_mm2']:,.0f}/mm²")
        return draw_banner(image, text, [f"mitosis: {name}" for name in self.subtypes],
                           colours=[self.colour(name) for name in self.subtypes])

    def to_geojson(self, result: dict[str, Any]) -> dict[str, Any]:
        """Points QuPath imports as detections classified 'Mitosis: normal' / 'Mitosis: atypical'."""
        return outputs.points_geojson(result["predictions"], lambda m: f"Mitosis: {m['subtype']}",
                                      lambda m: self.colour(m["subtype"]), ("probability", "subtype_probability"),
                                      "mitosis")

    def warm_up_input(self) -> Image.Image:
        image = Image.new("RGB", (128, 128), (235, 200, 220))
        ImageDraw.Draw(image).ellipse([50, 50, 78, 78], fill=(70, 40, 120))
        return image

    # ---- whole slides ---------------------------------------------------------------------------------
    def plan(self, slide, options: dict[str, Any], max_cells: int | None = None) -> engine.Plan:
        """Tissue blocks read at the model's resolution in cells of 64 µm, with a window's margin round each."""
        margin = self.input.window_px // 2
        spec = engine.TileSpec(self.input.mpp, SLIDE_CELL_PX + 2 * margin, SLIDE_CELL_PX)
        return engine.plan_slide(slide, spec, self.resolution(slide, options), True, max_cells)

    def analyse_block(self, pixels: np.ndarray, plan: engine.Plan, block: engine.Block,
                      options: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The block's mitosis count per cell and its mitoses (level-0 pixels); a mitosis in the margin is
        left to the block it belongs to, so none is counted twice."""
        margin = self.input.window_px // 2
        counts = np.zeros((block.rows, block.cols), np.float32)
        found = []
        for mitosis in self.detect(pixels, options["threshold"]):
            row, col = (mitosis["y"] - margin) // SLIDE_CELL_PX, (mitosis["x"] - margin) // SLIDE_CELL_PX
            if 0 <= row < block.rows and 0 <= col < block.cols and plan.tissue[block.row + row, block.col + col]:
                counts[row, col] += 1
                mitosis["x"] = round((block.col * SLIDE_CELL_PX + mitosis["x"] - margin) / plan.scale)
                mitosis["y"] = round((block.row * SLIDE_CELL_PX + mitosis["y"] - margin) / plan.scale)
                found.append(mitosis)
        return counts, found

    def slide_analysis(self, slide, plan: engine.Plan, found: list[tuple[np.ndarray, list[dict[str, Any]]]],
                       options: dict[str, Any]) -> SlideAnalysis:
        """Every mitosis, the count per mm² of tissue and per 10 HPF, the densest hotspot of 10 HPF's area
        (count and place) and a density heatmap with the figures marked."""
        counts = np.nan_to_num(engine.assemble(plan, [block_counts for block_counts, _ in found]))
        mitoses = sorted((m for _, block_mitoses in found for m in block_mitoses), key=lambda m: -m["probability"])
        cell_mm2 = (SLIDE_CELL_PX * self.input.mpp / 1000) ** 2
        side = max(1, round(math.sqrt(HOTSPOT_MM2 / cell_mm2)))  # cells per hotspot side
        in_hotspot = ndi.uniform_filter(counts, side, mode="constant") * side * side
        row, col = np.unravel_index(int(np.argmax(in_hotspot)), in_hotspot.shape)
        tissue_mm2 = float(plan.tissue.sum()) * cell_mm2
        per_mm2 = len(mitoses) / tissue_mm2 if tissue_mm2 else None
        # The square of ``side`` cells round the densest cell (uniform_filter's window), in level-0 pixels,
        # within the slide; none where no mitosis was found.
        first_row, first_col = row - side // 2, col - side // 2
        width, height = slide.dimensions
        box = (max(0.0, first_col * plan.cell_level0), max(0.0, first_row * plan.cell_level0),
               min(float(width), (first_col + side) * plan.cell_level0),
               min(float(height), (first_row + side) * plan.cell_level0)) if mitoses else None
        result = {
            **outputs.slide_facts(slide, plan),
            "predictions": mitoses, "count": len(mitoses), "counts": self.subtype_counts(mitoses),
            "tissue_area_mm2": round(tissue_mm2, 3),
            "mitoses_per_mm2": round(per_mm2, 3) if per_mm2 is not None else None,
            "mitoses_per_10_hpf": round(per_10_hpf(per_mm2), 2) if per_mm2 is not None else None,
            "hpf": hpf_note(),
            "hotspot": {"area_mm2": round(side * side * cell_mm2, 3), "count": round(float(in_hotspot.max())),
                        "box": [round(v) for v in box] if box else None},
        }
        density = np.where(plan.tissue, in_hotspot / max(1.0, float(in_hotspot.max())), np.nan)
        area, hotspot = result["hotspot"]["area_mm2"], result["hotspot"]["count"]
        title = (f"{len(mitoses)} mitoses, {result['mitoses_per_mm2'] or 0:g} per mm² of tissue; hotspot "
                 f"{hotspot} in {area:g} mm² (outlined)")
        heatmap = outputs.slide_heatmap(slide, plan, density, title, f"mitoses in {area:g} mm² round each point",
                                        str(max(1, hotspot)),
                                        [(m["x"], m["y"], self.colour(m["subtype"])) for m in mitoses],
                                        box)
        return SlideAnalysis(result, heatmap, self.to_geojson(result))


MODEL_CLASS = MitosisModel
