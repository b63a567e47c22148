"""Training of the chromosome instance detector (core/models/chromosome_detector.py) on spreads with boxes.

    python -m core.training.chromosome_detector --data ../shared/data/chromosome/metaphases --weights H5

The detector is an ensemble: one network per ``--seeds`` value (same recipe, different random start and
windows), their outputs averaged (core.models.chromosome_detector.ensemble).

First leave-one-spread-out: each spread is detected by an ensemble trained on the others, at the reporting
threshold and box-overlap limit that do best on the other spreads' held-out answers (so no spread's figure
comes from a setting chosen on it). Then the shipped ensemble trains on every spread, with the setting that
does best on all held-out answers, and model.json gets its ``detector`` section and ``metrics.detector``.

Every spread is first mapped to the training spreads' mean background and stain grey levels
(core.models.chromosome_detector.to_levels; in each fold, the levels of that fold's training spreads), as the
service maps every upload, so that a brighter or paler spread reaches the detector as the training ones did.

Each step draws random windows from the training spreads at half their native scale (jittered ±25 %), turned
by the 8 dihedral views, with brightness, contrast, gamma, colour, blur and noise jitter, and bands: a
stripe pattern lifted into the dark pixels, as G-banding makes them, so that a chromosome with pale bands
is still one chromosome.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from core.evaluation import bootstrap_interval, f1_counts, match_centres
from core.imageio import to_rgb8
from core.models.chromosome_detector import (box_overlap, build_detector, decode, detection_loss, dihedral_output,
                                             encode_targets, ensemble, grey_levels, median_size, reading_scale,
                                             stitched_output, to_levels, views_at)

#: the detector sees spreads at this fraction of their native size
SCALE = 0.5
#: side of a training window, in pixels at SCALE
WINDOW = 256
#: the service's tiles (pixels at SCALE) and the margin of each whose answers are not used
TILE, MARGIN = 384, 64
#: reporting thresholds tried
THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
#: box-overlap limits tried (1: none; see decode)
OVERLAPS = (1.0, 0.5, 0.4, 0.3)
#: the reporting settings tried: (threshold, max_overlap)
SETTINGS = tuple((threshold, overlap) for threshold in THRESHOLDS for overlap in OVERLAPS)
#: the largest scale a spread of small chromosomes is read at (core.models.chromosome_detector.reading_scale)
MAX_SCALE = 0.6
#: the setting of the first reading, which only measures the chromosomes (the shipped detector's)
READING_THRESHOLD, READING_OVERLAP = 0.45, 0.3
#: a window whose plain heat stays below this holds no chromosome's centre: its other views are not read
#: (a quarter of the lowest threshold tried, so that they would have to disagree with it fourfold)
QUIET_BELOW = 0.05
#: the views averaged when a spread is read larger than SCALE (about twice the windows): the 4 quarter turns
ENLARGED_VIEWS = 4
DETECTOR_FILE = "chromosome_detector.keras"
#: pixels a pasted single chromosome has at least, at its own scale
MIN_SINGLE_AREA = 200


def load_spread(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A spread's RGB pixels and its true boxes (x0, y0, x1, y1)."""
    from core.models.chromosome_training import yolo_boxes

    with Image.open(image_path) as image:
        rgb = to_rgb8(image)
    return rgb, np.asarray(yolo_boxes(label_path, rgb.shape[1], rgb.shape[0]), np.float32).reshape(-1, 4)


def _bands(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stripes across the dark (stained) pixels at a random angle and period, as G-banding makes them."""
    size = window.shape[0]
    angle, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
    yy, xx = np.mgrid[0:size, 0:size]
    wave = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    grey = window.mean(axis=2, keepdims=True)
    darkness = np.clip((np.median(grey) - 20 - grey) / 60, 0, 1)  # stained pixels only, not the background
    lift = rng.uniform(0.2, 0.6) * wave[..., None] * darkness
    return window + lift * (255 - window)


def load_singles(folder: Path) -> list[np.ndarray]:
    """Single chromosomes photographed alone (bright on black, e.g. BioImLab's Q-banded crops) as stain
    maps: 0 outside the chromosome (its largest bright part), up to 1 at its brightest band."""
    from skimage import filters, measure

    singles = []
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), np.float32)
        if min(grey.shape) < 8 or grey.max() == grey.min():
            continue
        parts = measure.label(grey > filters.threshold_otsu(grey))
        if parts.max():
            largest = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
            if largest.sum() < MIN_SINGLE_AREA:  # a speck the threshold left, not a chromosome
                continue
            singles.append(np.where(largest, grey / grey[largest].max(), 0).astype(np.float32))
    return singles


def _paste_singles(window: np.ndarray, boxes: np.ndarray, singles: list[np.ndarray], scale: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Copy-paste: up to 4 single chromosomes, turned at random and stained like the window's darkest pixels,
    where they overlap no labelled box; returns the boxes with theirs added (synthetic: counts are exact)."""
    grey = window.mean(axis=2)
    darkest = window[grey <= np.percentile(grey, 1)].mean(axis=0)
    stain = darkest if grey.mean() - darkest.mean() > 40 else np.array([60.0, 45.0, 85.0])
    added = [boxes]
    for _ in range(rng.integers(1, 5)):
        single = Image.fromarray((singles[rng.integers(len(singles))] * 255).astype(np.uint8))
        factor = scale * rng.uniform(0.6, 1.1)
        single = single.resize((max(2, round(single.width * factor)), max(2, round(single.height * factor))),
                               Image.BILINEAR).rotate(rng.uniform(0, 360), Image.BILINEAR, expand=True)
        amount = np.asarray(single, np.float32) / 255
        rows, cols = np.nonzero(amount > 0.1)
        if len(rows) == 0:
            continue
        amount = amount[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        h, w = amount.shape
        if h >= WINDOW or w >= WINDOW:
            continue
        x, y = int(rng.integers(0, WINDOW - w)), int(rng.integers(0, WINDOW - h))
        box = np.array([[x, y, x + w, y + h]], np.float32)
        taken = np.concatenate(added)
        if len(taken) and np.any((taken[:, 0] < x + w) & (taken[:, 2] > x) & (taken[:, 1] < y + h) & (taken[:, 3] > y)):
            continue
        alpha = np.clip(amount * 1.3, 0, 1)[..., None] * rng.uniform(0.7, 1.0)
        window[y:y + h, x:x + w] = window[y:y + h, x:x + w] * (1 - alpha) + stain * alpha
        added.append(box)
    return np.concatenate(added)


class PasteSingles:
    """Copy-paste of single chromosomes photographed alone (:func:`load_singles`), where they overlap no
    labelled box (:func:`_paste_singles`)."""

    def __init__(self, singles: list[np.ndarray], source: str) -> None:
        self.singles, self.source = singles, source

    def __call__(self, window: np.ndarray, boxes: np.ndarray, rgb: np.ndarray, spread_boxes: np.ndarray,
                 scale: float, rng: np.random.Generator) -> np.ndarray:
        return _paste_singles(window, boxes, self.singles, scale, rng)

    def describe(self) -> str:
        return f"{len(self.singles)} single chromosomes of {self.source} pasted into half the training windows"


#: how much smaller than its own size a chromosome of the spread is pasted (at the window's scale)
OWN_SHRINK = (0.4, 0.8)


class PasteOwn:
    """Copy-paste of the training spread's own chromosomes, shrunk, against a labelled neighbour: small
    chromosomes lying against larger ones are what the detector misses, and six spreads show few of them.
    Tried and not shipped (README): more spurious peaks, no fewer misses.
    Each pasted chromosome is cut out of its box by its darkness over the spread's background, and laid
    over the window where it is darker, so that the neighbour stays visible beneath it."""

    def __init__(self) -> None:
        self._donors: dict[int, tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]] = {}

    def donors(self, rgb: np.ndarray, boxes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(pixels, opacity) of each labelled chromosome of a spread, opacity 0 outside its largest dark part."""
        from scipy import ndimage as ndi

        if id(rgb) in self._donors:
            return self._donors[id(rgb)][1]
        grey = rgb.astype(np.float32).mean(axis=2)
        background, stain = float(np.median(grey)), float(np.percentile(grey, 0.5))
        found = []
        for x0, y0, x1, y1 in boxes:
            x0, y0 = max(0, int(x0) - 2), max(0, int(y0) - 2)
            x1, y1 = min(rgb.shape[1], int(np.ceil(x1)) + 2), min(rgb.shape[0], int(np.ceil(y1)) + 2)
            crop = rgb[y0:y1, x0:x1].astype(np.float32)
            dark = np.clip((background - crop.mean(axis=2)) / max(background - stain, 1.0), 0, 1)
            parts, count = ndi.label(ndi.binary_closing(dark > 0.25))
            if count == 0:
                continue
            largest = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
            if largest.sum() >= 30:
                found.append((crop, np.where(ndi.binary_dilation(largest), np.clip(dark * 1.5, 0, 1), 0)))
        self._donors[id(rgb)] = (rgb, found)  # holding rgb keeps its id unique while cached
        return found

    def __call__(self, window: np.ndarray, boxes: np.ndarray, rgb: np.ndarray, spread_boxes: np.ndarray,
                 scale: float, rng: np.random.Generator) -> np.ndarray:
        donors = self.donors(rgb, spread_boxes)
        added = list(boxes)  # every box's centre lies in the window (random_window)
        for _ in range(rng.integers(1, 4)):
            if not donors or not len(boxes):
                break
            crop, opacity = donors[rng.integers(len(donors))]
            factor = scale * rng.uniform(*OWN_SHRINK)
            size = (max(3, round(crop.shape[1] * factor)), max(3, round(crop.shape[0] * factor)))
            turns = int(rng.integers(4))
            piece = np.rot90(np.asarray(Image.fromarray(crop.astype(np.uint8)).resize(size, Image.BILINEAR),
                                        np.float32), turns)
            amount = np.rot90(np.asarray(Image.fromarray((opacity * 255).astype(np.uint8)).resize(
                size, Image.BILINEAR), np.float32) / 255, turns)
            rows, cols = np.nonzero(amount > 0.25)
            if len(rows) < 4:
                continue
            # centred at a random angle from a neighbour's centre, overlapping its box
            nx0, ny0, nx1, ny1 = boxes[rng.integers(len(boxes))]
            h, w = amount.shape
            angle = rng.uniform(0, 2 * np.pi)
            reach = (np.hypot(nx1 - nx0, ny1 - ny0) + np.hypot(w, h)) / 2 * rng.uniform(0.45, 0.8)
            x = int(round((nx0 + nx1) / 2 + reach * np.cos(angle) - w / 2))
            y = int(round((ny0 + ny1) / 2 + reach * np.sin(angle) - h / 2))
            if x < 0 or y < 0 or x + w > WINDOW or y + h > WINDOW:
                continue
            box = (x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            # not where the decoder could not tell it from a labelled one (decode's overlap limits)
            if any(box_overlap(box, tuple(b)) > 0.3 or np.hypot((b[0] + b[2]) / 2 - cx, (b[1] + b[3]) / 2 - cy) < 6
                   for b in added):
                continue
            region = window[y:y + h, x:x + w]
            window[y:y + h, x:x + w] = np.minimum(region, region * (1 - amount[..., None]) + piece * amount[..., None])
            added.append(np.array(box, np.float32))
        return np.stack(added).astype(np.float32) if added else boxes

    def describe(self) -> str:
        return (f"in half the training windows, 1-3 of the spread's own chromosomes shrunk to {OWN_SHRINK[0]}-"
                f"{OWN_SHRINK[1]} of their size and pasted against a labelled neighbour")


def random_window(rgb: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                  paste: PasteSingles | PasteOwn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One augmented ``WINDOW``² training window and its boxes in window pixels; with ``paste``, half the
    windows get pasted chromosomes."""
    scale = SCALE * rng.uniform(0.8, 1.25)
    side = int(round(WINDOW / scale))
    height, width = rgb.shape[:2]
    # Half the windows are centred on a chromosome, so that every step sees some.
    if len(boxes) and rng.random() < 0.5:
        x0, y0, x1, y1 = boxes[rng.integers(len(boxes))]
        left = int((x0 + x1) / 2 - rng.uniform(0.1, 0.9) * side)
        top = int((y0 + y1) / 2 - rng.uniform(0.1, 0.9) * side)
    else:
        left, top = int(rng.integers(0, max(1, width - side))), int(rng.integers(0, max(1, height - side)))
    left, top = int(np.clip(left, 0, max(0, width - side))), int(np.clip(top, 0, max(0, height - side)))
    crop = rgb[top:top + side, left:left + side]
    crop = np.pad(crop, ((0, side - crop.shape[0]), (0, side - crop.shape[1]), (0, 0)), mode="edge")  # small spreads
    crop = Image.fromarray(crop).resize((WINDOW, WINDOW), Image.BILINEAR)
    if rng.random() < 0.3:
        crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    window = np.asarray(crop, np.float32)
    shifted = (boxes - np.array([left, top, left, top], np.float32)) * (WINDOW / side)
    centres = (shifted[:, :2] + shifted[:, 2:]) / 2
    keep = np.all((centres >= 0) & (centres < WINDOW), axis=1)
    shifted = shifted[keep]  # not clipped: a box cut by the edge keeps its centre
    if paste is not None and rng.random() < 0.5:
        window = window.copy()
        shifted = paste(window, shifted, rgb, boxes, scale, rng)

    if rng.random() < 0.4:
        window = _bands(window, rng)
    grey = window.mean(axis=2, keepdims=True)
    if rng.random() < 0.3:
        window = np.repeat(grey, 3, axis=2)  # grey scans
    window = window * rng.uniform(0.85, 1.15, 3)  # colour balance
    mean = window.mean()
    window = (window - mean) * rng.uniform(0.7, 1.4) + mean + rng.uniform(-25, 25)
    window = 255 * (np.clip(window, 0, 255) / 255) ** rng.uniform(0.7, 1.4)
    window = window + rng.normal(0, rng.uniform(0, 6), window.shape)
    window = np.clip(window, 0, 255)

    for _ in range(rng.integers(4)):  # a quarter turn: (x, y) -> (y, W - x)
        window = np.rot90(window)
        shifted = np.stack([shifted[:, 1], WINDOW - shifted[:, 2], shifted[:, 3], WINDOW - shifted[:, 0]], axis=1)
    if rng.random() < 0.5:
        window = window[:, ::-1]
        shifted = np.stack([WINDOW - shifted[:, 2], shifted[:, 1], WINDOW - shifted[:, 0], shifted[:, 3]], axis=1)
    return np.ascontiguousarray(window, np.float32), shifted


def batches(spreads: list[tuple[np.ndarray, np.ndarray]], batch_size: int, seed: int,
            paste: PasteSingles | PasteOwn | None = None):
    rng = np.random.default_rng(seed)
    while True:
        images, targets = [], []
        for _ in range(batch_size):
            rgb, boxes = spreads[rng.integers(len(spreads))]
            window, shifted = random_window(rgb, boxes, rng, paste)
            images.append(window)
            targets.append(encode_targets(shifted, WINDOW, WINDOW))
        yield np.stack(images), np.stack(targets)


def train(spreads: list[tuple[np.ndarray, np.ndarray]], backbone_weights: str, steps: int, seed: int = 0,
          batch_size: int = 8, paste: PasteSingles | PasteOwn | None = None):
    import keras

    keras.utils.set_random_seed(seed)
    model = build_detector(backbone_weights)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.05, warmup_target=None)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=detection_loss)
    model.fit(batches(spreads, batch_size, seed, paste), steps_per_epoch=steps // 10, epochs=10, verbose=2)
    return model


@dataclass(frozen=True)
class Reading:
    """A detector's output over one spread, read at ``scale``."""
    output: np.ndarray
    scale: float


def network_output(models: list, rgb: np.ndarray, scale: float, plain: np.ndarray | None = None) -> np.ndarray:
    """The ensemble's stitched output (its members' mean) over a spread resized by ``scale``, as the service
    computes it; given ``plain``, that output, its heatmap averaged over the 8 dihedral views, or over
    ``ENLARGED_VIEWS`` when read larger than ``SCALE`` (:func:`dihedral_output`, quiet windows excepted)."""
    height, width = rgb.shape[:2]
    small = np.asarray(Image.fromarray(rgb).resize((int(round(width * scale)), int(round(height * scale))),
                                                   Image.BILINEAR), np.float32)

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.mean([np.asarray(model.predict(batch, verbose=0)) for model in models], axis=0)

    if plain is None:
        return stitched_output(forward, small, TILE, MARGIN)
    return dihedral_output(forward, small, TILE, MARGIN, plain, QUIET_BELOW,
                           views_at(scale, SCALE, ENLARGED_VIEWS))


def boxes_at(reading: Reading, setting: tuple[float, float]) -> list[tuple[float, float, float, float]]:
    """Decoded boxes (x0, y0, x1, y1) in the spread's own pixels at ``setting`` (threshold, max_overlap)."""
    threshold, max_overlap = setting
    return [tuple(v / reading.scale for v in d.box) for d in decode(reading.output, threshold, max_overlap)]


def read_spread(models: list, rgb: np.ndarray, reference: float) -> tuple[Reading, Reading, Reading]:
    """The spread read as the service reads it: once at ``SCALE`` without the 8 views, whose chromosomes'
    median size sets the scale (:func:`reading_scale`), then at that scale with and without the views
    averaged (:func:`network_output`); (with, without, the first member alone with them). ``reference``: the training spreads' median size."""
    first = network_output(models, rgb, SCALE)
    setting = (READING_THRESHOLD, READING_OVERLAP)
    scale = reading_scale(median_size(boxes_at(Reading(first, SCALE), setting)), SCALE, reference, MAX_SCALE)
    plain = first if scale == SCALE else network_output(models, rgb, scale)
    viewed = network_output(models, rgb, scale, plain)
    single = network_output(models[:1], rgb, scale, network_output(models[:1], rgb, scale))
    return Reading(viewed, scale), Reading(plain, scale), Reading(single, scale)


def reference_size(spreads: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The training spreads' chromosome size: the mean over spreads of each one's median labelled box."""
    return round(float(np.mean([median_size([tuple(b) for b in boxes]) for _, boxes in spreads])), 2)


def _spread_counts(reading: Reading, truth: np.ndarray, setting: tuple[float, float]) -> tuple[int, int]:
    """(predicted, hits) of one spread at ``setting``; a hit is a box centre inside a true box, one-to-one."""
    boxes = boxes_at(reading, setting)
    centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes]
    return len(boxes), match_centres(centres, [tuple(b) for b in truth])


def _pooled_f1(outputs: dict[str, Reading], truths: dict[str, np.ndarray], setting: tuple[float, float]) -> float:
    counted = [(*_spread_counts(outputs[name], truths[name], setting), len(truths[name])) for name in outputs]
    predicted, hits, true = (sum(c[k] for c in counted) for k in range(3))
    return 2 * hits / max(1, predicted + true)


def best_setting(outputs: dict[str, Reading], truths: dict[str, np.ndarray]) -> tuple[float, float]:
    """The (threshold, max_overlap) of ``SETTINGS`` with the best pooled F1 on ``outputs``; on a tie the
    first, the lowest threshold without an overlap limit."""
    return max(SETTINGS, key=lambda setting: _pooled_f1(outputs, truths, setting))


def evaluate_held_out(outputs: dict[str, Reading], truths: dict[str, np.ndarray]) -> dict[str, Any]:
    """Figures of held-out outputs (one per spread), each spread at the setting best on the others."""
    per_spread, tp, fp, fn = {}, 0, 0, 0
    for name in outputs:
        chosen = best_setting({k: v for k, v in outputs.items() if k != name}, truths)
        predicted, hits = _spread_counts(outputs[name], truths[name], chosen)
        true = len(truths[name])
        tp, fp, fn = tp + hits, fp + predicted - hits, fn + true - hits
        scores = f1_counts(hits, predicted - hits, true - hits)
        per_spread[f"spread {name}"] = {"true": true, "predicted": predicted, "hits": hits, "threshold": chosen[0],
                                        "max_overlap": chosen[1], "scale": round(outputs[name].scale, 4),
                                        **{k: scores[k] for k in ("precision", "recall", "f1")},
                                        "count_error": round(abs(predicted - true) / true, 4)}
    errors = [s["count_error"] for s in per_spread.values()]
    return {"split": "leave-one-spread-out: each spread detected by a detector trained on the other spreads, at "
                     "the threshold and box-overlap limit best on the other spreads' held-out answers",
            "spreads": len(outputs), **f1_counts(tp, fp, fn),
            "count_error_mean": round(float(np.mean(errors)), 4), "count_error_max": round(max(errors), 4),
            **spread_intervals(per_spread), "per_spread": per_spread}


def spread_intervals(per_spread: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """95 % bootstrap intervals over spreads (few spreads carry the figures) of the pooled F1 and of the mean
    count error, from each spread's true, predicted and hit counts."""
    spreads = list(per_spread.values())

    def pooled_f1(sample: list[dict[str, Any]]) -> float:
        return 2 * sum(s["hits"] for s in sample) / sum(s["predicted"] + s["true"] for s in sample)

    def mean_error(sample: list[dict[str, Any]]) -> float:
        return float(np.mean([s["count_error"] for s in sample]))

    return {"f1_interval_95": list(bootstrap_interval(spreads, pooled_f1)),
            "count_error_mean_interval_95": list(bootstrap_interval(spreads, mean_error)),
            "interval": f"bootstrap over the {len(spreads)} spreads"}


def training_levels(spreads: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The mean background and stain levels of the training spreads: every spread the detector reads, in
    training and in service, is mapped to them first (:func:`to_levels`)."""
    levels = [grey_levels(rgb) for rgb, _ in spreads]
    return {key: round(float(np.mean([level[key] for level in levels])), 2) for key in levels[0]}


def at_levels(spreads: list[tuple[np.ndarray, np.ndarray]], levels: dict[str, float]):
    return [(to_levels(rgb, levels), boxes) for rgb, boxes in spreads]


def train_ensemble(spreads: list[tuple[np.ndarray, np.ndarray]], weights: str, steps: int, seeds: list[int],
                   paste: PasteSingles | PasteOwn | None = None) -> list:
    return [train(spreads, weights, steps, seed, paste=paste) for seed in seeds]


def leave_one_spread_out(spreads: dict[str, tuple[np.ndarray, np.ndarray]], weights: str, steps: int,
                         seeds: list[int], paste: PasteSingles | PasteOwn | None = None
                         ) -> tuple[dict[str, Any], tuple[float, float]]:
    """The held-out figures (:func:`evaluate_held_out`) of the ensemble with the 8-view heatmap as served,
    without the 8 views, and of its first member alone; the setting best on all held-out answers. Each
    fold's levels and reference size come from its training spreads only."""
    outputs, plain, single = {}, {}, {}
    for name in spreads:
        print(f"[detector] spread {name} held out", flush=True)
        training = [v for k, v in spreads.items() if k != name]
        levels = training_levels(training)
        members = train_ensemble(at_levels(training, levels), weights, steps, seeds, paste)
        held_out = to_levels(spreads[name][0], levels)
        outputs[name], plain[name], single[name] = read_spread(members, held_out, reference_size(training))
        print(f"[detector] spread {name} read at {outputs[name].scale:.3f}", flush=True)
    truths = {name: boxes for name, (_, boxes) in spreads.items()}
    figures = evaluate_held_out(outputs, truths)
    figures["without_tta"] = {k: v for k, v in evaluate_held_out(plain, truths).items() if k != "split"}
    if len(seeds) > 1:
        figures["one_detector"] = {k: v for k, v in evaluate_held_out(single, truths).items() if k != "split"}
    return figures, best_setting(outputs, truths)


def trivial_baselines(spreads: dict[str, tuple[np.ndarray, np.ndarray]], segmentation: dict[str, Any]) -> dict[str, Any]:
    """Every segmented object called a chromosome; and each spread's count answered as the others' mean."""
    from core.models.chromosome import segment_spread

    tp = fp = fn = 0
    errors = []
    for name, (rgb, truth) in spreads.items():
        objects = segment_spread(rgb.mean(axis=2), segmentation).objects
        hits = match_centres([(o.centroid[1], o.centroid[0]) for o in objects], [tuple(b) for b in truth])
        tp, fp, fn = tp + hits, fp + len(objects) - hits, fn + len(truth) - hits
        mean_of_others = np.mean([len(b) for k, (_, b) in spreads.items() if k != name])
        errors.append(abs(mean_of_others - len(truth)) / len(truth))
    return {"every_object_a_chromosome": f1_counts(tp, fp, fn),
            "count_as_the_other_spreads_mean": {"count_error_mean": round(float(np.mean(errors)), 4),
                                                "count_error_max": round(float(max(errors)), 4)}}


def serving_network(members: list):
    """The trained ``members`` as one network for a fixed ``TILE``² input that averages them, as the service
    runs it (ONNX wants static shapes)."""
    return ensemble(members, TILE)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import os
    import sys
    import time

    from config import ROOT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="metaphases folder: images/ and YOLO labels/")
    parser.add_argument("--weights", required=True, help="MobileNet v1 (α 0.25) ImageNet weights (.h5), or none")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="one detector of the ensemble per seed (default: two)")
    parser.add_argument("--paste", type=Path, help="a folder of single-chromosome crops (bright on black) to paste "
                        "into training windows as synthetic chromosomes, e.g. BioImLab's")
    parser.add_argument("--paste-own", action="store_true", help="paste the training spreads' own chromosomes, "
                        "shrunk, against labelled neighbours (PasteOwn)")
    parser.add_argument("--assets", type=Path, default=ROOT / "assets")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from core.assets import read_spec, write_meta
    from core.models.chromosome_training import spreads as labelled_spreads
    from core.training.trainer import save_network

    started = time.perf_counter()
    spec = read_spec(args.assets / "chromosome")
    spreads = {image.stem: load_spread(image, labels) for image, labels in labelled_spreads(args.data)}
    paste = PasteOwn() if args.paste_own else PasteSingles(load_singles(args.paste), args.paste.name) if args.paste else None
    figures, (threshold, max_overlap) = leave_one_spread_out(spreads, args.weights, args.steps, args.seeds, paste)
    figures["trivial_baselines"] = trivial_baselines(spreads, spec.meta["input"]["segmentation"])
    print(f"[detector] {json.dumps({k: v for k, v in figures.items() if k != 'per_spread'})}", flush=True)
    print(f"[detector] training on all {len(spreads)} spreads; threshold {threshold}, max overlap {max_overlap}",
          flush=True)
    levels = training_levels(list(spreads.values()))
    network = serving_network(train_ensemble(at_levels(list(spreads.values()), levels), args.weights, args.steps,
                                             args.seeds, paste))
    meta = read_spec(spec.directory).meta  # as it is now: the run takes a while
    meta["detector"] = {
        "weights": save_network(network, spec.directory, DETECTOR_FILE),
        "scale": SCALE, "reference_size_px": reference_size(list(spreads.values())), "max_scale": MAX_SCALE,
        "quiet_below": QUIET_BELOW, "enlarged_views": ENLARGED_VIEWS, "tile": TILE, "margin": MARGIN,
        "threshold": threshold, "max_overlap": max_overlap,
        "tta": True, "levels": levels, "members": len(args.seeds),
        "training": {"command": "python -m core.training.chromosome_detector " + " ".join(sys.argv[1:] if argv is None else argv),
                     "steps": args.steps, "seeds": args.seeds, "window_px": WINDOW, "backbone": "mobilenet_v1_0.25",
                     "synthetic": paste.describe() if paste else None,
                     "minutes": round((time.perf_counter() - started) / 60, 1)},
    }
    meta.setdefault("metrics", {})["detector"] = figures
    write_meta(spec.directory, meta)
    print(f"[detector] wrote {spec.directory / DETECTOR_FILE} and model.json", flush=True)


if __name__ == "__main__":
    main()
