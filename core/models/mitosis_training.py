"""Training and evaluation of the mitosis model on AMi-Br crops (``amibr.csv`` + ``patches/<subtype>/``).

Each 128-px crop is centred on an annotated figure; ``amibr.csv`` lists every figure of its slide, so all
figures inside a crop are known and everything else is non-mitotic tissue. Positives are the centre figure
(centred and shifted), negatives candidate nuclei and random points away from every figure. The reporting
threshold is chosen on the validation slides; the evaluation runs the serving detector on the held-out
slides' crops and on mosaics of them.
"""
from __future__ import annotations

import csv
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from core.evaluation import balanced_accuracy, f1_counts, match_points
from core.imageio import to_rgb8
from core.models.mitosis import propose
from core.training.recipe import TrainingRecipe

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Crop = tuple[Path, "Figure", list[tuple[float, float, bool]]]


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


def crops(data_dir: Path) -> Iterator[Crop]:
    """Every crop file with its figure and the figures inside it (the centre one included)."""
    figures = read_figures(data_dir)
    by_slide: dict[str, list[Figure]] = defaultdict(list)
    for figure in figures.values():
        by_slide[figure.slide].append(figure)
    for subtype in ("normal", "atypical"):
        for path in sorted((data_dir / "patches" / subtype).glob("*.jpg")):
            figure = figures.get(path.stem)
            if figure is not None:
                with Image.open(path) as image:
                    yield path, figure, crop_truth(figure, by_slide, image.width)


def mosaic(tiles: list[Crop], images: dict[Path, np.ndarray], side: int) -> tuple[np.ndarray, np.ndarray]:
    """``side``×``side`` crops of one slide tiled into one field (white where they run out), with its figures."""
    size = next(iter(images.values())).shape[0]
    field = np.full((side * size, side * size, 3), 255, np.uint8)
    truth = []
    for k, (path, _, figures) in enumerate(tiles):
        r0, c0 = (k // side) * size, (k % side) * size
        field[r0:r0 + size, c0:c0 + size] = images[path]
        truth += [(r0 + r, c0 + c) for r, c, _ in figures]
    return field, np.array(truth, float).reshape(-1, 2)


class MitosisTraining(TrainingRecipe):
    rotation_fill = "reflect"  # tissue continues past a window's edge; black corners would be a shortcut

    def examples(self, data_dir: Path) -> Iterator[tuple[np.ndarray, int, str]]:
        """Per crop: its centre figure as a positive (centred and shifted), and negatives centred on candidate
        nuclei and random points at least ``negative_min_px`` from every figure in the crop."""
        model, names = self.model, self.model.spec.label_names
        settings = model.input.training_sampling
        for path, figure, truth in crops(data_dir):
            rng = np.random.default_rng(zlib.crc32(path.stem.encode()))
            with Image.open(path) as image:
                rgb = to_rgb8(image)
            label = names.index("atypical" if figure.atypical else "normal")
            middle = np.array(rgb.shape[:2]) // 2
            shift = settings["positive_shift_px"]
            positives = [middle] + [middle + rng.integers(-shift, shift + 1, 2) for _ in range(settings["shifted"])]
            for x in model.network_windows(rgb, np.array(positives)):
                yield x, label, figure.slide
            points = np.array([(r, c) for r, c, _ in truth])
            candidates = propose(rgb, model.input.proposals)
            random_points = rng.integers(0, rgb.shape[0], (settings["random_negatives"] * 4, 2))
            negatives = []
            for pool, wanted in ((candidates, settings["candidate_negatives"]),
                                 (random_points, settings["random_negatives"])):
                far = [p for p in pool if np.hypot(*(points - p).T).min() >= settings["negative_min_px"]]
                negatives += [far[k] for k in rng.permutation(len(far))[:wanted]]
            if negatives:
                for x in model.network_windows(rgb, np.array(negatives)):
                    yield x, names.index("non_mitosis"), figure.slide

    def calibrate(self, data_dir: Path, groups: set[str]) -> dict[str, dict[str, Any]]:
        """The reporting threshold with the best F1 on mosaics of the validation slides' crops."""
        chosen = [crop for crop in crops(data_dir) if crop[1].slide in groups]
        images = {path: to_rgb8(Image.open(path)) for path, _, _ in chosen}
        by_threshold = self.on_mosaics(chosen, images, 0.5)["by_threshold"]
        best = max(by_threshold, key=lambda t: (by_threshold[t], -abs(float(t) - 0.5)))
        return {"defaults": {"threshold": float(best)},
                "inference": {"threshold_chosen_by": "F1 on mosaics of the validation slides' crops",
                              "validation_f1_by_threshold": by_threshold}}

    def evaluate(self, data_dir: Path, groups: set[str]) -> dict[str, Any]:
        """On the held-out slides' crops: detection (a hit is within ``match_px``, one-to-one) on every crop
        and on 4×4 mosaics of crops of one slide; subtype balanced accuracy of the true figures found, and
        of every crop's centre figure classified at its annotated position."""
        model, match_px = self.model, self.model.input.match_px
        held_out = [crop for crop in crops(data_dir) if crop[1].slide in groups]
        images = {path: to_rgb8(Image.open(path)) for path, _, _ in held_out}
        threshold = next(option.default for option in model.declared_options() if option.name == "threshold")
        per_crop = {"tp": 0, "fp": 0, "fn": 0}
        subtype_pairs: list[tuple[bool, bool]] = []
        per_group: dict[str, dict[str, int]] = defaultdict(lambda: {"true": 0, "tp": 0, "fp": 0, "fn": 0})
        for path, figure, truth in held_out:
            found = model.detect(images[path], threshold)
            points = np.array([(m["y"], m["x"]) for m in found], float).reshape(-1, 2)
            pairs = match_points(points, np.array([(r, c) for r, c, _ in truth]), match_px)
            counts = {"tp": len(pairs), "fp": len(found) - len(pairs), "fn": len(truth) - len(pairs)}
            for key, value in counts.items():
                per_crop[key] += value
                per_group[figure.slide][key] += value
            per_group[figure.slide]["true"] += len(truth)
            subtype_pairs += [(truth[t][2], found[f]["subtype"] == "atypical") for f, t in pairs]
        mosaics = self.on_mosaics(held_out, images, threshold)
        centres = np.concatenate([model.network_windows(images[path], np.array([np.array(images[path].shape[:2]) // 2]))
                                  for path, _, _ in held_out])
        centre = model.run_network(centres)
        names = model.spec.label_names
        centre_atypical = centre[:, names.index("atypical")] >= centre[:, names.index("normal")]
        truth_atypical = [figure.atypical for _, figure, _ in held_out]
        return {
            "rule": f"a detection within {match_px:g} px (about {match_px * model.input.mpp:g} um) of a true "
                    f"mitosis, one-to-one; threshold {threshold}",
            "slides": len(groups), "crops": len(held_out),
            **mosaics["pooled"],
            "on_crops": f1_counts(**per_crop),
            "on_mosaics": mosaics,
            "subtype_of_detected": balanced_accuracy(subtype_pairs, ("normal", "atypical")),
            "subtype_at_annotation": balanced_accuracy(list(zip(truth_atypical, centre_atypical.tolist())),
                                                       ("normal", "atypical")),
            "per_group": dict(per_group),
        }

    def on_mosaics(self, chosen: list[Crop], images: dict[Path, np.ndarray], threshold: float, side: int = 4
                   ) -> dict[str, Any]:
        """Detection F1 on ``side``×``side`` mosaics of one slide's crops (a stand-in for a field), at
        ``threshold`` and at each of THRESHOLDS."""
        model = self.model
        by_slide: dict[str, list[Crop]] = defaultdict(list)
        for crop in chosen:
            by_slide[crop[1].slide].append(crop)
        count = 0
        by_threshold: dict[float, list[int]] = {t: [0, 0, 0] for t in THRESHOLDS}
        for slide_crops in by_slide.values():
            for start in range(0, len(slide_crops), side * side):
                field, truth = mosaic(slide_crops[start:start + side * side], images, side)
                centres = propose(field, model.input.proposals)
                probabilities = model.run_network(model.network_windows(field, centres))
                for t, tally in by_threshold.items():
                    found = model.mitoses(centres, probabilities, t)
                    points = np.array([(m["y"], m["x"]) for m in found], float).reshape(-1, 2)
                    hits = len(match_points(points, truth, model.input.match_px))
                    tally[0] += hits
                    tally[1] += len(found) - hits
                    tally[2] += len(truth) - hits
                count += 1
        nearest = min(by_threshold, key=lambda t: abs(t - threshold))
        return {"mosaics": count, "side_px": side * 128, "pooled": f1_counts(*by_threshold[nearest]),
                "by_threshold": {str(t): f1_counts(*tally)["f1"] for t, tally in by_threshold.items()}}


RECIPE = MitosisTraining
