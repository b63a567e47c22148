"""Mitotic figures in H&E at 40x: where each one is, normal or atypical, and how many per mm².

Two stages, as in the TUPAC16 prior art, with a cheaper first stage: candidate nuclei are the local maxima
of the smoothed haematoxylin channel (colour deconvolution, scikit-image's H&E matrix); a patch CNN sees the
64×64 window around each candidate and says non-mitosis / normal / atypical; candidates closer than the
challenge's 30 px are one mitosis (the most probable is kept). Whole slides are read block by block through
``core.wsi.engine`` and analysed the same way, tissue only.
"""
from __future__ import annotations

import csv
import math
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from skimage.color import hed_from_rgb
from skimage.feature import peak_local_max

from core.drawing import draw_banner
from core.errors import ClientError
from core.imageio import to_rgb8
from core.model_base import MicroscopyModel
from core.options import Option
from core.tta import dihedral_mean
from core.wsi import engine, outputs
from core.wsi.slide import describe, required_mpp

#: the largest field (after rescaling to the model's resolution) one predict call analyses; more is a job
MAX_FIELD_PX = 4096 * 4096
#: whole slides: grid cells of this many pixels at the model's resolution (64 µm at 0.25 µm/px)
SLIDE_CELL_PX = 256
#: the hotspot area the slide result reports (mm²), as grading counts mitoses in a hotspot
HOTSPOT_MM2 = 2.0
SUBTYPES = ("normal", "atypical")
COLOURS = {"normal": (0, 158, 115), "atypical": (213, 94, 0)}


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


def match_points(found: np.ndarray, truth: np.ndarray, radius: float) -> list[tuple[int, int]]:
    """One-to-one pairs (found index, truth index) within ``radius``, maximising the pairs (Hungarian)."""
    if not len(found) or not len(truth):
        return []
    distance = np.hypot(found[:, None, 0] - truth[None, :, 0], found[:, None, 1] - truth[None, :, 1])
    cost = np.where(distance <= radius, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if distance[r, c] <= radius]


def f1_counts(tp: int, fp: int, fn: int) -> dict[str, Any]:
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4)}


# ---- the data set ---------------------------------------------------------------------------------------
class Figure:
    """One annotated mitotic figure of ``amibr.csv``: slide position and expert majority subtype."""

    def __init__(self, row: dict[str, str]):
        self.key = f"{row['dataset']}_{row['uid']}"
        self.slide = f"{row['dataset']}/{row['slide']}"
        self.x, self.y = float(row["x"]), float(row["y"])
        self.atypical = row["majority_atypical"].strip().lower() == "true"


def read_figures(data_dir: Path) -> dict[str, Figure]:
    with open(data_dir / "amibr.csv", newline="") as handle:
        return {figure.key: figure for figure in map(Figure, csv.DictReader(handle))}


def crop_truth(figure: Figure, by_slide: dict[str, list[Figure]], side: int) -> list[tuple[float, float, bool]]:
    """Every figure inside a ``side``-px crop centred on ``figure``: (row, col, atypical) in crop pixels."""
    half = side / 2
    return [(half + other.y - figure.y, half + other.x - figure.x, other.atypical) for other in by_slide[figure.slide]
            if abs(other.x - figure.x) < half and abs(other.y - figure.y) < half]


class MitosisModel(MicroscopyModel):
    options = (
        Option("mpp", float, 0.0, "micrometres per pixel of the upload or slide; 0: a slide's own "
               "(openslide.mpp-x), for images the model's 0.25 (40x); other values are rescaled",
               minimum=0.0, maximum=10.0),
        Option("threshold", float, 0.5, "mitosis probability at or above which a candidate is reported "
               "(default: model.json's inference.threshold, chosen on validation slides)",
               minimum=0.0, maximum=1.0),
    )
    formats = ("json", "png", "geojson")
    rotation_fill = "reflect"
    takes_slides = True
    batch_size = 64

    @property
    def mpp(self) -> float:
        return float(self.spec.input["mpp"])

    @property
    def window_px(self) -> int:
        return int(self.spec.input["window_px"])

    @property
    def network_px(self) -> int:
        return int(self.spec.input["network_input"][0])

    def declared_options(self) -> tuple[Option, ...]:
        """The threshold's default is model.json's ``inference.threshold`` (chosen on validation slides)."""
        chosen = self.spec.meta.get("inference", {}).get("threshold")
        return tuple(replace(option, default=float(chosen)) if option.name == "threshold" and chosen is not None
                     else option for option in super().declared_options())

    @property
    def default_threshold(self) -> float:
        return next(option.default for option in self.declared_options() if option.name == "threshold")

    @property
    def merge_px(self) -> float:
        return float(self.spec.input["merge_px"])

    # ---- a field --------------------------------------------------------------------------------------
    def run_network(self, batch: np.ndarray) -> np.ndarray:
        """Every window once; the 8-view average (model.json ``inference.tta``) only for windows whose single
        view gives at least ``inference.tta_above`` mitosis probability. Most candidates are plainly not
        mitoses: on the early-stopping slides 18 % of them reached 0.05, and F1 was that of averaging all."""
        tta_above = self.spec.meta.get("inference", {}).get("tta_above")
        if not self.uses_tta or tta_above is None or not len(batch):
            return super().run_network(batch)
        probabilities = self._run_batches(batch)
        names = self.spec.label_names
        doubtful = np.flatnonzero(probabilities[:, names.index("normal")]
                                  + probabilities[:, names.index("atypical")] >= tta_above)
        if len(doubtful):
            probabilities[doubtful] = dihedral_mean(self._run_batches, batch[doubtful])
        return probabilities

    def network_windows(self, rgb: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """The network's input for each centre: the window around it, scaled to the network's side."""
        windows = windows_at(rgb, centres, self.window_px)
        if self.network_px == self.window_px:
            return windows
        size = (self.network_px, self.network_px)
        return np.stack([np.asarray(Image.fromarray(w).resize(size, Image.Resampling.BILINEAR)) for w in windows]) \
            if len(windows) else np.zeros((0,) + size + (3,), np.uint8)

    def at_model_scale(self, image: Image.Image, mpp: float) -> tuple[np.ndarray, float]:
        """The upload resampled to the model's µm/px, and the factor (model pixels per upload pixel)."""
        scale = mpp / self.mpp
        width, height = round(image.width * scale), round(image.height * scale)
        if width * height > MAX_FIELD_PX:
            raise ClientError(f"the field is {width}x{height} px at {self.mpp} um/px; the limit here is "
                              f"{MAX_FIELD_PX:,} px - send it as a whole-slide job, or check the option mpp")
        if abs(scale - 1) > 0.02:
            image = image.resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR)
        else:
            scale = 1.0
        return to_rgb8(image), scale

    def detect(self, rgb: np.ndarray, threshold: float,
               centres_of: Callable[[np.ndarray], np.ndarray] | None = None) -> list[dict[str, Any]]:
        """Mitoses in an RGB field at the model's resolution: candidates (or ``centres_of(rgb)``), the
        classifier, duplicates merged. Positions in the field's pixels, most probable first."""
        centres = propose(rgb, self.spec.input["proposals"]) if centres_of is None else centres_of(rgb)
        probabilities = self.run_network(self.network_windows(rgb, centres))
        return self.mitoses(centres, probabilities, threshold)

    def mitoses(self, centres: np.ndarray, probabilities: np.ndarray, threshold: float) -> list[dict[str, Any]]:
        names = self.spec.label_names
        normal, atypical = probabilities[:, names.index("normal")], probabilities[:, names.index("atypical")]
        mitosis = normal + atypical
        above = np.flatnonzero(mitosis >= threshold)
        if not len(above):
            return []
        points = centres[above].astype(float)
        tree = cKDTree(points)
        found = []
        for kept in merge_duplicates(points, mitosis[above], self.merge_px):
            index = above[kept]
            # The subtype of the whole cluster (its candidates weighted by mitosis probability): steadier than
            # the top candidate's alone (balanced accuracy 0.752 -> 0.762 on the early-stopping slides).
            cluster = above[tree.query_ball_point(points[kept], self.merge_px)]
            p_atypical = float(atypical[cluster].sum() / max(mitosis[cluster].sum(), 1e-9))
            subtype = "atypical" if p_atypical >= 0.5 else "normal"
            found.append({"x": int(centres[index, 1]), "y": int(centres[index, 0]),
                          "probability": round(float(mitosis[index]), 4), "subtype": subtype,
                          "subtype_probability": round(p_atypical if subtype == "atypical" else 1 - p_atypical, 4)})
        return found

    def preprocess(self, inputs: Image.Image, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        rgb, scale = self.at_model_scale(inputs, options["mpp"] or self.mpp)
        centres = propose(rgb, self.spec.input["proposals"])
        return self.network_windows(rgb, centres), (centres, scale, inputs.size, options["mpp"] or self.mpp)

    def postprocess(self, outputs: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        centres, scale, (width, height), mpp = context
        found = self.mitoses(centres, outputs, options["threshold"])
        for mitosis in found:  # back to upload pixels
            mitosis["x"], mitosis["y"] = round(mitosis["x"] / scale), round(mitosis["y"] / scale)
        area_mm2 = width * height * mpp * mpp / 1e6
        return {
            "predictions": found,
            "count": len(found),
            "counts": {name: sum(m["subtype"] == name for m in found) for name in SUBTYPES},
            "mitoses_per_mm2": round(len(found) / area_mm2, 2),
            "field": {"width": width, "height": height, "mpp": mpp, "area_mm2": round(area_mm2, 5)},
            "candidates": len(centres),
        }

    def render(self, inputs: Image.Image, result: dict[str, Any]) -> Image.Image:
        """Circles (30 px at 40x, the matching radius) round each mitosis, coloured by subtype."""
        image = inputs.convert("RGB")
        draw = ImageDraw.Draw(image)
        scale = result["field"]["mpp"] / self.mpp
        radius, width = max(6, round(self.merge_px / scale)), max(2, round(max(image.size) / 400))
        for mitosis in result["predictions"]:
            x, y = mitosis["x"], mitosis["y"]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=COLOURS[mitosis["subtype"]],
                         width=width)
        counts = result["counts"]
        text = f"{result['count']} mitoses ({counts['atypical']} atypical), {result['mitoses_per_mm2']:,.0f}/mm²"
        return _banner(image, text)

    def to_geojson(self, result: dict[str, Any]) -> dict[str, Any]:
        """Points QuPath imports as detections classified 'Mitosis: normal' / 'Mitosis: atypical'."""
        features = []
        for index, mitosis in enumerate(result["predictions"], 1):
            features.append({
                "type": "Feature", "id": f"mitosis-{index}",
                "geometry": {"type": "Point", "coordinates": [mitosis["x"], mitosis["y"]]},
                "properties": {"objectType": "detection",
                               "classification": {"name": f"Mitosis: {mitosis['subtype']}",
                                                  "color": list(COLOURS[mitosis["subtype"]])},
                               "probability": mitosis["probability"],
                               "subtype_probability": mitosis["subtype_probability"]},
            })
        return {"type": "FeatureCollection", "features": features}

    def warm_up_input(self) -> Image.Image:
        image = Image.new("RGB", (128, 128), (235, 200, 220))
        ImageDraw.Draw(image).ellipse([50, 50, 78, 78], fill=(70, 40, 120))
        return image

    # ---- whole slides ---------------------------------------------------------------------------------
    def check_slide(self, slide, options: dict[str, Any]) -> None:
        required_mpp(slide, options["mpp"] or None)

    def analyse_slide(self, slide, options: dict[str, Any], progress: engine.Progress) -> outputs.SlideAnalysis:
        """Tissue blocks read at 0.25 µm/px, mitoses found in each; a count grid of 64-µm cells, the densest
        2-mm² hotspot, a density heatmap and every mitosis as a GeoJSON point (level-0 pixels)."""
        mpp = required_mpp(slide, options["mpp"] or None)
        margin = self.window_px // 2
        spec = engine.TileSpec(self.mpp, SLIDE_CELL_PX + 2 * margin, SLIDE_CELL_PX)
        plan = engine.plan_slide(slide, spec, mpp, tissue_only=True)
        counts = np.zeros((plan.rows, plan.cols), np.float32)
        found: list[dict[str, Any]] = []
        total = max(1, int(plan.tissue.sum()))
        done = 0
        for block in plan.blocks:
            pixels = engine.read_block(slide, plan, block)
            for mitosis in self.detect(pixels, options["threshold"]):
                row, col = (mitosis["y"] - margin) // SLIDE_CELL_PX, (mitosis["x"] - margin) // SLIDE_CELL_PX
                inside = 0 <= row < block.rows and 0 <= col < block.cols  # not in the margin (the next block's)
                if inside and plan.tissue[block.row + row, block.col + col]:
                    counts[block.row + row, block.col + col] += 1
                    mitosis["x"] = round((block.col * SLIDE_CELL_PX + mitosis["x"] - margin) / plan.scale)
                    mitosis["y"] = round((block.row * SLIDE_CELL_PX + mitosis["y"] - margin) / plan.scale)
                    found.append(mitosis)
            done += int(plan.tissue[block.row:block.row + block.rows, block.col:block.col + block.cols].sum())
            progress(done / total, f"searched {done:,} of {total:,} tissue tiles; {len(found)} mitoses so far")
        return self._slide_result(slide, plan, counts, found, mpp)

    def _slide_result(self, slide, plan: engine.Plan, counts: np.ndarray, found: list[dict[str, Any]],
                      mpp: float) -> outputs.SlideAnalysis:
        cell_mm2 = (SLIDE_CELL_PX * self.mpp / 1000) ** 2
        side = max(1, round(math.sqrt(HOTSPOT_MM2 / cell_mm2)))  # cells per hotspot side
        in_hotspot = ndi.uniform_filter(counts, side, mode="constant") * side * side
        tissue_mm2 = float(plan.tissue.sum()) * cell_mm2
        found.sort(key=lambda m: -m["probability"])
        result = {
            "slide": describe(slide, mpp), "level_read": plan.level,
            "predictions": found, "count": len(found),
            "counts": {name: sum(m["subtype"] == name for m in found) for name in SUBTYPES},
            "tissue_area_mm2": round(tissue_mm2, 3),
            "mitoses_per_mm2": round(len(found) / tissue_mm2, 3) if tissue_mm2 else None,
            "hotspot": {"area_mm2": round(side * side * cell_mm2, 3), "count": round(float(in_hotspot.max()))},
        }
        thumbnail = slide.get_thumbnail((engine.THUMBNAIL_PX, engine.THUMBNAIL_PX)).convert("RGB")
        shrink = thumbnail.width / slide.dimensions[0]
        extent = (plan.cols * plan.cell_level0 * shrink, plan.rows * plan.cell_level0 * shrink)
        density = np.where(plan.tissue, in_hotspot / max(1.0, float(in_hotspot.max())), np.nan)
        title = f"mitoses per {result['hotspot']['area_mm2']:g} mm2 (hotspot {result['hotspot']['count']})"
        heatmap = outputs.heatmap_overlay(thumbnail, density, extent, title)
        return outputs.SlideAnalysis(result, heatmap, self.to_geojson(result))

    # ---- training and evaluation -----------------------------------------------------------------------
    def _crops(self, data_dir: Path) -> Iterator[tuple[Path, Figure, list[tuple[float, float, bool]]]]:
        """Every crop file with its figure and the figures inside it (the centre one included)."""
        figures = read_figures(data_dir)
        by_slide: dict[str, list[Figure]] = defaultdict(list)
        for figure in figures.values():
            by_slide[figure.slide].append(figure)
        for subtype in SUBTYPES:
            for path in sorted((data_dir / "patches" / subtype).glob("*.jpg")):
                figure = figures.get(path.stem)
                if figure is not None:
                    with Image.open(path) as image:
                        yield path, figure, crop_truth(figure, by_slide, image.width)

    def training_data(self, data_dir: Path) -> Iterator[tuple[np.ndarray, int, str]]:
        """Per crop: its centre figure as a positive (centred and shifted), and negatives centred on candidate
        nuclei and random points at least ``negative_min_px`` from every figure in the crop."""
        names = self.spec.label_names
        settings = self.spec.input["training"]
        for path, figure, truth in self._crops(data_dir):
            rng = np.random.default_rng(zlib.crc32(path.stem.encode()))
            with Image.open(path) as image:
                rgb = to_rgb8(image)
            label = names.index("atypical" if figure.atypical else "normal")
            middle = np.array(rgb.shape[:2]) // 2
            shift = settings["positive_shift_px"]
            positives = [middle] + [middle + rng.integers(-shift, shift + 1, 2) for _ in range(settings["shifted"])]
            for x in self.network_windows(rgb, np.array(positives)):
                yield x, label, figure.slide
            points = np.array([(r, c) for r, c, _ in truth])
            candidates = propose(rgb, self.spec.input["proposals"])
            random_points = rng.integers(0, rgb.shape[0], (settings["random_negatives"] * 4, 2))
            negatives = []
            for pool, wanted in ((candidates, settings["candidate_negatives"]),
                                 (random_points, settings["random_negatives"])):
                far = [p for p in pool if np.hypot(*(points - p).T).min() >= settings["negative_min_px"]]
                negatives += [far[k] for k in rng.permutation(len(far))[:wanted]]
            if negatives:
                for x in self.network_windows(rgb, np.array(negatives)):
                    yield x, names.index("non_mitosis"), figure.slide

    def calibrate(self, data_dir: Path, groups: set[str]) -> dict[str, Any]:
        """The reporting threshold with the best F1 on mosaics of the validation slides' crops."""
        crops = [crop for crop in self._crops(data_dir) if crop[1].slide in groups]
        images = {path: to_rgb8(Image.open(path)) for path, _, _ in crops}
        by_threshold = self._evaluate_mosaics(crops, images, 0.5, float(self.spec.input["match_px"]))["by_threshold"]
        best = max(by_threshold, key=lambda t: (by_threshold[t], -abs(float(t) - 0.5)))
        return {"threshold": float(best), "threshold_chosen_by": "F1 on mosaics of the validation slides' crops",
                "validation_f1_by_threshold": by_threshold}

    def evaluate_detection(self, data_dir: Path, groups: set[str]) -> dict[str, Any]:
        """On the held-out slides' crops: detection (a hit is within ``match_px``, one-to-one) on every crop
        and on 4×4 mosaics of crops of one slide; subtype balanced accuracy of the true figures found, and
        of every crop's centre figure classified at its annotated position."""
        match_px = float(self.spec.input["match_px"])
        crops = [(path, figure, truth) for path, figure, truth in self._crops(data_dir) if figure.slide in groups]
        images = {path: to_rgb8(Image.open(path)) for path, _, _ in crops}
        threshold = self.default_threshold
        per_crop = {"tp": 0, "fp": 0, "fn": 0}
        subtype_pairs: list[tuple[bool, bool]] = []
        per_group: dict[str, dict[str, int]] = defaultdict(lambda: {"true": 0, "tp": 0, "fp": 0, "fn": 0})
        for path, figure, truth in crops:
            found = self.detect(images[path], threshold)
            points = np.array([(m["y"], m["x"]) for m in found], float).reshape(-1, 2)
            truth_points = np.array([(r, c) for r, c, _ in truth])
            pairs = match_points(points, truth_points, match_px)
            counts = {"tp": len(pairs), "fp": len(found) - len(pairs), "fn": len(truth) - len(pairs)}
            for key, value in counts.items():
                per_crop[key] += value
                per_group[figure.slide][key] += value
            per_group[figure.slide]["true"] += len(truth)
            subtype_pairs += [(truth[t][2], found[f]["subtype"] == "atypical") for f, t in pairs]
        mosaics = self._evaluate_mosaics(crops, images, threshold, match_px)
        centre = self.run_network(self.network_windows_of_centres([images[path] for path, _, _ in crops]))
        names = self.spec.label_names
        centre_atypical = centre[:, names.index("atypical")] >= centre[:, names.index("normal")]
        truth_atypical = [figure.atypical for _, figure, _ in crops]
        return {
            "rule": f"a detection within {match_px:g} px (about {match_px * self.mpp:g} um) of a true mitosis, "
                    f"one-to-one; threshold {threshold}",
            "slides": len(groups), "crops": len(crops),
            **mosaics["pooled"],
            "on_crops": f1_counts(**per_crop),
            "on_mosaics": mosaics,
            "subtype_of_detected": _balanced(subtype_pairs),
            "subtype_at_annotation": _balanced(list(zip(truth_atypical, centre_atypical.tolist()))),
            "per_group": dict(per_group),
        }

    def network_windows_of_centres(self, crops: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([self.network_windows(rgb, np.array([np.array(rgb.shape[:2]) // 2])) for rgb in crops])

    def _evaluate_mosaics(self, crops, images: dict, threshold: float, match_px: float, side: int = 4
                          ) -> dict[str, Any]:
        """Crops of one slide tiled ``side``×``side`` (white where a slide runs out): a stand-in for a field."""
        by_slide: dict[str, list] = defaultdict(list)
        for crop in crops:
            by_slide[crop[1].slide].append(crop)
        count = 0
        by_threshold: dict[float, list[int]] = {t: [0, 0, 0] for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}
        for slide_crops in by_slide.values():
            for start in range(0, len(slide_crops), side * side):
                mosaic, truth = _mosaic(slide_crops[start:start + side * side], images, side)
                centres = propose(mosaic, self.spec.input["proposals"])
                probabilities = self.run_network(self.network_windows(mosaic, centres))
                for t, tally in by_threshold.items():
                    found = self.mitoses(centres, probabilities, t)
                    points = np.array([(m["y"], m["x"]) for m in found], float).reshape(-1, 2)
                    hits = len(match_points(points, truth, match_px))
                    tally[0] += hits
                    tally[1] += len(found) - hits
                    tally[2] += len(truth) - hits
                count += 1
        chosen = min(by_threshold, key=lambda t: abs(t - threshold))
        tp, fp, fn = by_threshold[chosen]
        return {"mosaics": count, "side_px": side * 128, "pooled": f1_counts(tp, fp, fn),
                "by_threshold": {str(t): f1_counts(*tally)["f1"] for t, tally in by_threshold.items()}}


def _mosaic(crops, images: dict, side: int) -> tuple[np.ndarray, np.ndarray]:
    size = next(iter(images.values())).shape[0]
    mosaic = np.full((side * size, side * size, 3), 255, np.uint8)
    truth = []
    for k, (path, _, crop_truth_points) in enumerate(crops):
        r0, c0 = (k // side) * size, (k % side) * size
        mosaic[r0:r0 + size, c0:c0 + size] = images[path]
        truth += [(r0 + r, c0 + c) for r, c, _ in crop_truth_points]
    return mosaic, np.array(truth, float).reshape(-1, 2)


def _balanced(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """Balanced accuracy of atypical (True) vs normal (False) over (truth, predicted) pairs."""
    truth = np.array([t for t, _ in pairs], bool)
    predicted = np.array([p for _, p in pairs], bool)
    recalls = {name: float((predicted[truth == value] == value).mean()) if (truth == value).any() else None
               for name, value in (("normal", False), ("atypical", True))}
    known = [r for r in recalls.values() if r is not None]
    return {"figures": len(pairs), "atypical": int(truth.sum()),
            "balanced_accuracy": round(float(np.mean(known)), 4) if known else None,
            "recall": {k: None if v is None else round(v, 4) for k, v in recalls.items()}}


def _banner(image: Image.Image, text: str) -> Image.Image:
    return draw_banner(image, text, [f"mitosis: {name}" for name in SUBTYPES], colours=list(COLOURS.values()))


MODEL_CLASS = MitosisModel
