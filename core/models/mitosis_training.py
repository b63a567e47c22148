"""Training and evaluation of the mitosis model on AMi-Br crops (``amibr.csv`` + ``patches/<subtype>/``).

Each 128-px crop is centred on an annotated figure; ``amibr.csv`` lists every figure of its slide, so all
figures inside a crop are known and everything else is non-mitotic tissue. Positives are the centre figure
(centred and shifted), negatives candidate nuclei and random points away from every figure. Hard negatives
come from a region of tissue without tumour (model.json ``training_sampling.hard_negatives``): every candidate
nucleus of its top part trains as non-mitosis; its bottom part is only ever reported (mitoses found there are
false). Each crop also trains at half resolution (scanned at 20x, as that region was), so blur tells nothing.
The reporting threshold is chosen on the validation slides; the evaluation runs the serving detector on the
held-out slides' crops, on mosaics of them and on the reported part of the hard-negative region.
"""
from __future__ import annotations

import csv
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from core.evaluation import balanced_accuracy, bootstrap_interval, f1_counts, match_points
from core.imageio import to_rgb8
from core.models.mitosis import propose
from core.training.recipe import TrainingRecipe

#: the group of the mined hard negatives: training only (their region's other part is reported)
HARD_NEGATIVE_GROUP = "hard-negatives"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: single-view mitosis probabilities from which a window gets the 8-view average (0: every window)
TTA_ABOVE = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
#: F1 the cheaper test-time augmentation may lose on the validation mosaics (about one figure in 500)
TTA_F1_TOLERANCE = 0.002
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


def split_region(width: int, height: int, mined_share: float) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(mined box, reported box) of a region as (left, top, right, bottom): the top ``mined_share`` of its rows
    trains, the rest is reported; no row is in both."""
    cut = round(height * mined_share)
    return (0, 0, width, cut), (0, cut, width, height)


def hard_negative_region(data_dir: Path, settings: dict[str, Any]):
    """The region without mitoses (an OpenSlide object) and its µm/px, or None where its file is absent."""
    from core.wsi.slide import open_slide, slide_mpp

    path = data_dir / settings["slide"]
    if not path.is_file():
        return None
    slide = open_slide(path)
    return slide, slide_mpp(slide, None)


def region_pixels(slide, box: tuple[int, int, int, int]) -> Image.Image:
    left, top, right, bottom = box
    return slide.read_region((left, top), 0, (right - left, bottom - top)).convert("RGB")


def degrade(rgb: np.ndarray, factor: int = 2) -> np.ndarray:
    """The image as a scanner with ``factor`` times coarser pixels would give it, at the same size."""
    image = Image.fromarray(rgb)
    small = image.resize((max(1, image.width // factor), max(1, image.height // factor)), Image.Resampling.BOX)
    return np.asarray(small.resize(image.size, Image.Resampling.BILINEAR))


def slide_intervals(per_group: dict[str, dict[str, int]], subtype_pairs: dict[str, list[tuple[bool, bool]]]
                    ) -> dict[str, Any]:
    """95 % intervals over the held-out slides (resampled whole, 2,000 times): detection F1 on the crops and
    the subtype balanced accuracy of the figures found."""
    def f1_of(slides: list[str]) -> float:
        return f1_counts(*(sum(per_group[s][k] for s in slides) for k in ("tp", "fp", "fn")))["f1"]

    def subtype_of(slides: list[str]) -> float:
        pairs = [p for s in slides for p in subtype_pairs.get(s, [])]
        return balanced_accuracy(pairs, ("normal", "atypical"))["balanced_accuracy"] or 0.0

    slides = sorted(per_group)
    return {"resampled": "whole held-out slides, 2,000 times (95 % percentile interval)", "slides": len(slides),
            "f1_on_crops": bootstrap_interval(slides, f1_of), "subtype_of_detected": bootstrap_interval(slides, subtype_of)}


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
            for _ in range(settings["degraded"]):  # the centre figure and one negative, at 20x sharpness
                blurred = degrade(rgb)
                yield model.network_windows(blurred, middle[None])[0], label, figure.slide
                if negatives:
                    yield model.network_windows(blurred, np.array(negatives[:1]))[0], names.index("non_mitosis"), \
                        figure.slide
        yield from self.hard_negatives(data_dir)

    def hard_negatives(self, data_dir: Path) -> Iterator[tuple[np.ndarray, int, str]]:
        """Every candidate nucleus of the mined part of the region without mitoses, as non-mitosis. Windows are
        cut from the mined part alone (mirrored at its edge), so no pixel of the reported part trains."""
        settings = self.model.input.training_sampling["hard_negatives"]
        region = hard_negative_region(data_dir, settings)
        if region is None:
            print(f"[data] no hard-negative region at {settings['slide']}: trained without it", flush=True)
            return
        slide, mpp = region
        mined, _ = split_region(*slide.dimensions, settings["mined_share"])
        rgb, _ = self.model.at_model_scale(region_pixels(slide, mined), mpp)
        centres = propose(rgb, self.model.input.proposals)
        label = self.model.spec.label_names.index("non_mitosis")
        for start in range(0, len(centres), 256):
            for x in self.model.network_windows(rgb, centres[start:start + 256]):
                yield x, label, HARD_NEGATIVE_GROUP

    def uploads(self, data_dir: Path) -> list[tuple[dict[str, Path], str]]:
        return [({"image": path}, figure.slide) for path, figure, _ in crops(data_dir)]

    def training_only(self, groups: np.ndarray) -> np.ndarray:
        return groups == HARD_NEGATIVE_GROUP

    def subtype_examples(self, data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The subtype classifier's windows: every crop's figure centred and shifted (a detection is seldom on
        the figure's centre), its label (atypical: 1), slide, and whether it is the centred one."""
        model, sampling = self.model, self.model.subtype_spec["sampling"]
        windows, labels, slides, centred = [], [], [], []
        for path, figure, _ in crops(data_dir):
            rng = np.random.default_rng(zlib.crc32(path.stem.encode()))
            with Image.open(path) as image:
                rgb = to_rgb8(image)
            middle = np.array(rgb.shape[:2]) // 2
            shift = sampling["shift_px"]
            centres = [middle] + [middle + rng.integers(-shift, shift + 1, 2) for _ in range(sampling["shifted"])]
            windows.append(model.subtype_windows(rgb, np.array(centres)))
            labels += [int(figure.atypical)] * len(centres)
            slides += [figure.slide] * len(centres)
            centred += [True] + [False] * sampling["shifted"]
        return np.concatenate(windows), np.array(labels), np.array(slides), np.array(centred)

    def train_companions(self, settings, groups: dict[str, set[str]]) -> dict[str, Any]:
        """The subtype classifier (model.json ``subtype``), on the detector's split of slides: fitted on its
        training slides, stopped early and given its atypical cut-off (best balanced accuracy, 8 views) on
        its validation slides; :meth:`evaluate` measures it on the test slides."""
        import keras

        from core.training.backbones import build_classifier
        from core.training.data import dataset
        from core.training.trainer import save_network

        spec = self.model.subtype_spec
        if not spec:
            return {}
        x, y, slides, centred = self.subtype_examples(settings.data)
        train = np.flatnonzero(np.isin(slides, sorted(groups["train"])))
        val = np.flatnonzero(np.isin(slides, sorted(groups["val"])) & centred)
        print(f"[subtype] {len(train)} training windows ({int(y[train].sum())} atypical), {len(val)} validation "
              f"figures", flush=True)
        weight = len(train) / (2 * np.bincount(y[train], minlength=2))
        network = build_classifier(settings.backbone, settings.weights, x.shape[1:], 2, settings.mode)
        network.compile(optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"])
        network.fit(dataset(x[train], y[train], weight[y[train]].astype(np.float32), settings.batch_size, True,
                            settings.seed, self.rotation_fill, stain_sigma=spec["sampling"].get("stain_sigma", 0.0)),
                    validation_data=dataset(x[val], y[val], weight[y[val]].astype(np.float32), settings.batch_size,
                                            False, settings.seed),
                    epochs=spec["sampling"]["epochs"], verbose=2,
                    callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=4,
                                                             restore_best_weights=True),
                               keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=2)])
        self.model.use_companion_network("subtype", network)

        def pairs(index: np.ndarray, cut: float) -> list[tuple[bool, bool]]:
            return list(zip(y[index].astype(bool).tolist(), (atypical[index] >= cut).tolist()))

        atypical = np.zeros(len(y), np.float32)
        atypical[val] = self.model.atypical_probability(x[val])
        by_cut = {f"{cut:.2f}": balanced_accuracy(pairs(val, cut), ("normal", "atypical"))["balanced_accuracy"]
                  for cut in np.arange(0.2, 0.81, 0.05)}
        cut = float(max(by_cut, key=lambda c: (by_cut[c], -abs(float(c) - 0.5))))
        spec.update(atypical_at=cut, weights=save_network(network, settings.out, spec["weights"]["file"]),
                    atypical_at_chosen_by="balanced accuracy on the validation slides' figures, 8 views",
                    validation_balanced_accuracy_by_cut=by_cut)
        print(f"[subtype] atypical at {cut}: balanced accuracy {by_cut[f'{cut:.2f}']} on the validation slides' "
              f"figures (test figures: see the detection report)", flush=True)
        return {"subtype": spec}

    def calibrate(self, data_dir: Path, groups: set[str]) -> dict[str, dict[str, Any]]:
        """On mosaics of the validation slides' crops: the reporting threshold with the best F1, then the
        highest ``tta_above`` (single-view probability from which a window gets the 8-view average) whose F1
        stays within TTA_F1_TOLERANCE of averaging every window's views at each of THRESHOLDS (a client may
        choose any of them)."""
        chosen = [crop for crop in crops(data_dir) if crop[1].slide in groups]
        images = {path: to_rgb8(Image.open(path)) for path, _, _ in chosen}
        inference = self.model.spec.meta.setdefault("inference", {})
        by_tta_above = {}
        for tta_above in TTA_ABOVE:
            inference["tta_above"] = tta_above
            by_tta_above[str(tta_above)] = self.on_mosaics(chosen, images, 0.5)["by_threshold"]
        every = by_tta_above[str(TTA_ABOVE[0])]
        loss = {t: round(max(every[k] - f1 for k, f1 in by_threshold.items()), 4)
                for t, by_threshold in by_tta_above.items()}
        inference["tta_above"] = max(t for t in TTA_ABOVE if loss[str(t)] <= TTA_F1_TOLERANCE)
        served = by_tta_above[str(inference["tta_above"])]
        best = max(served, key=lambda t: (served[t], -abs(float(t) - 0.5)))
        return {"defaults": {"threshold": float(best)},
                "inference": {"threshold_chosen_by": "F1 on mosaics of the validation slides' crops",
                              "validation_f1_by_threshold": served,
                              "tta_above": inference["tta_above"],
                              "tta_above_chosen_by": f"the highest whose F1 on the validation mosaics, at every "
                                                     f"threshold from {THRESHOLDS[0]} to {THRESHOLDS[-1]}, is "
                                                     f"within {TTA_F1_TOLERANCE} of every window's 8 views averaged",
                              "validation_f1_loss_by_tta_above": loss}}

    def evaluate(self, data_dir: Path, groups: set[str]) -> dict[str, Any]:
        """On the held-out slides' crops: detection (a hit is within ``match_px``, one-to-one) on every crop
        and on 4×4 mosaics of crops of one slide; subtype balanced accuracy of the true figures found, and
        of every crop's centre figure classified at its annotated position."""
        model, match_px = self.model, self.model.input.match_px
        held_out = [crop for crop in crops(data_dir) if crop[1].slide in groups]
        images = {path: to_rgb8(Image.open(path)) for path, _, _ in held_out}
        threshold = next(option.default for option in model.declared_options() if option.name == "threshold")
        per_crop = {"tp": 0, "fp": 0, "fn": 0}
        subtype_pairs: dict[str, list[tuple[bool, bool]]] = defaultdict(list)  # per slide
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
            subtype_pairs[figure.slide] += [(truth[t][2], found[f]["subtype"] == "atypical") for f, t in pairs]
        mosaics = self.on_mosaics(held_out, images, threshold)
        middles = {path: np.array([np.array(images[path].shape[:2]) // 2]) for path, _, _ in held_out}
        centre = model.run_network(np.concatenate([model.network_windows(images[path], middles[path])
                                                   for path, _, _ in held_out]))
        names = model.spec.label_names
        by_detector = centre[:, names.index("atypical")] >= centre[:, names.index("normal")]
        truth_atypical = [figure.atypical for _, figure, _ in held_out]
        at_annotation = {"by_detector": balanced_accuracy(list(zip(truth_atypical, by_detector.tolist())),
                                                          ("normal", "atypical"))}
        if model.subtype_spec:
            atypical = model.atypical_probability(np.concatenate([model.subtype_windows(images[path], middles[path])
                                                                  for path, _, _ in held_out]))
            at_annotation["by_subtype_classifier"] = balanced_accuracy(
                list(zip(truth_atypical, (atypical >= model.subtype_spec["atypical_at"]).tolist())),
                ("normal", "atypical"))
        return {
            "rule": f"a detection within {match_px:g} px (about {match_px * model.input.mpp:g} um) of a true "
                    f"mitosis, one-to-one; threshold {threshold}",
            "slides": len(groups), "crops": len(held_out),
            **mosaics["pooled"],
            "on_crops": f1_counts(**per_crop),
            "on_mosaics": mosaics,
            "subtype_of_detected": balanced_accuracy([p for pairs in subtype_pairs.values() for p in pairs],
                                                     ("normal", "atypical")),
            "subtype_baseline": "a constant answer (every figure normal, the majority) has balanced accuracy 0.5",
            "intervals": slide_intervals(per_group, subtype_pairs),
            "subtype_at_annotation": at_annotation,
            "per_group": dict(per_group),
            "tissue_without_mitoses": self.on_reported_region(data_dir, threshold),
        }

    def on_reported_region(self, data_dir: Path, threshold: float) -> dict[str, Any] | None:
        """Mitoses the detector reports on the part of the hard-negative region that never trains: all false."""
        settings = self.model.input.training_sampling["hard_negatives"]
        region = hard_negative_region(data_dir, settings)
        if region is None:
            return None
        slide, mpp = region
        _, reported = split_region(*slide.dimensions, settings["mined_share"])
        rgb, _ = self.model.at_model_scale(region_pixels(slide, reported), mpp)
        centres = propose(rgb, self.model.input.proposals)
        probabilities = self.model.run_network(self.model.network_windows(rgb, centres))
        mitosis = probabilities[:, 1:].sum(axis=1)
        width, height = reported[2] - reported[0], reported[3] - reported[1]
        return {"region": f"{Path(settings['slide']).name}, rows {reported[1]}-{reported[3]} of {slide.dimensions[1]} "
                          f"(never trained); every mitosis reported there is false",
                "area_mm2": round(width * height * mpp * mpp / 1e6, 3), "candidates": len(centres),
                "reported": len(self.model.mitoses(centres, probabilities, threshold)),
                "reported_by_threshold": {str(t): len(self.model.mitoses(centres, probabilities, t))
                                          for t in THRESHOLDS},
                "candidates_at_or_above_threshold": int((mitosis >= threshold).sum())}

    def on_mosaics(self, chosen: list[Crop], images: dict[Path, np.ndarray], threshold: float, side: int = 4
                   ) -> dict[str, Any]:
        """Detection F1 on ``side``×``side`` mosaics of one slide's crops (a stand-in for a field), at
        ``threshold`` and at each of THRESHOLDS."""
        model = self.model
        by_slide: dict[str, list[Crop]] = defaultdict(list)
        for crop in chosen:
            by_slide[crop[1].slide].append(crop)
        count = 0
        by_threshold: dict[float, list[int]] = {t: [0, 0, 0] for t in (0.0,) + THRESHOLDS}
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
        nearest = min(THRESHOLDS, key=lambda t: abs(t - threshold))
        return {"mosaics": count, "side_px": side * 128, "pooled": f1_counts(*by_threshold[nearest]),
                "by_threshold": {str(t): f1_counts(*by_threshold[t])["f1"] for t in THRESHOLDS},
                # the trivial baseline: every candidate nucleus a mitosis (merged within merge_px), no classifier
                "every_candidate": f1_counts(*by_threshold[0.0])}


RECIPE = MitosisTraining
