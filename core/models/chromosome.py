"""Chromosome counting: metaphase spread → every dark object, classified chromosome or not, and a count.

Segmentation (scikit-image): a local (adaptive) threshold of the smoothed grey image, closing and hole
filling, a size filter, a watershed from dark cores that splits only oversized components (touching
chromosomes), and the pairing of separated sister chromatids (two close, parallel objects of similar
size are one chromosome). Each object becomes a crop (its binary mask, or the colour image around it) at a fixed
pixel scale, so object size is kept, and a small CNN says chromosome or non-chromosome (interphase-nucleus
fragments, debris, stain).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from core.drawing import draw_banner, draw_boxes
from core.imageio import to_rgb8
from core.model_base import MicroscopyModel
from core.options import Option

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass(frozen=True)
class Segmentation:
    labels: np.ndarray                      # int image: 0 background, k object k
    objects: list  # skimage RegionProperties, one per object


def segment_spread(grey: np.ndarray, params: dict[str, Any]) -> Segmentation:
    """Dark objects of a Giemsa-stained spread; ``params`` is model.json's ``input.segmentation``."""
    smooth = ndi.gaussian_filter(grey.astype(np.float32), params["sigma"])
    block = params["block_size"]
    mask = smooth < filters.threshold_local(smooth, block if block % 2 else block + 1, offset=params["offset"])
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, morphology.disk(params["closing_px"])))
    mask = morphology.remove_small_objects(mask, max_size=params["min_area_px"])
    labels = measure.label(mask)
    objects = measure.regionprops(labels)
    if objects:
        labels, split_parts = _split_clusters(labels, objects, smooth, params)
        labels = _pair_sister_chromatids(labels, measure.regionprops(labels), split_parts, params)
    return Segmentation(labels, measure.regionprops(labels))


def _split_clusters(labels: np.ndarray, objects, smooth: np.ndarray,
                    params: dict[str, Any]) -> tuple[np.ndarray, set[int]]:
    """Watershed from dark cores (h-maxima of darkness) inside components far above the median size;
    also returns the labels of the parts made, which pairing must not join again."""
    typical = float(np.median([o.area for o in objects]))
    out, parts_made = labels.copy(), set()
    next_label = labels.max() + 1
    for obj in objects:
        if obj.area <= params["split_area_factor"] * typical:
            continue
        darkness = -smooth[obj.slice]
        darkness = np.where(obj.image, darkness, darkness.min())
        markers = measure.label(morphology.h_maxima(darkness, params["split_h"]).astype(bool) & obj.image)
        if markers.max() < 2:
            continue
        parts = segmentation.watershed(-darkness, markers, mask=obj.image)
        region = out[obj.slice]
        parts_made.add(obj.label)
        for part in range(2, parts.max() + 1):  # part 1 keeps the original label
            region[parts == part] = next_label
            parts_made.add(next_label)
            next_label += 1
    return out, parts_made


def _pair_sister_chromatids(labels: np.ndarray, objects, exempt: set[int], params: dict[str, Any]) -> np.ndarray:
    """Join two objects within ``pair_gap_px`` of each other whose areas differ by at most the ratio and whose
    axes are within ``pair_angle_deg``: chromatids that have come apart. Most parallel pairs join first."""
    gap = params["pair_gap_px"]
    if not gap:
        return labels
    by_label = {obj.label: obj for obj in objects}
    candidates = []
    for obj in objects:
        if obj.label in exempt:
            continue
        top, left, bottom, right = obj.bbox
        window = (slice(max(0, top - gap), bottom + gap), slice(max(0, left - gap), right + gap))
        near = ndi.binary_dilation(labels[window] == obj.label, morphology.disk(gap))
        for other_label in np.unique(labels[window][near]):
            if other_label <= obj.label or other_label in exempt:
                continue
            other = by_label[other_label]
            if min(obj.area, other.area) / max(obj.area, other.area) < params["pair_area_ratio"]:
                continue
            angle = abs(np.degrees(obj.orientation - other.orientation)) % 180
            angle = min(angle, 180 - angle)
            if angle <= params["pair_angle_deg"]:
                candidates.append((angle, obj.label, other_label))
    out, paired = labels.copy(), set()
    for _, first, second in sorted(candidates):
        if first not in paired and second not in paired:
            paired |= {first, second}
            out[out == second] = first
    return out


def object_crop(rgb: np.ndarray, labels: np.ndarray, obj, window: int, size: int, style: str) -> np.ndarray:
    """A square around the object at a fixed pixel scale (wider only for objects larger than the window)."""
    top, left, bottom, right = obj.bbox
    side = max(window, bottom - top + 8, right - left + 8)
    cy, cx = (top + bottom) // 2, (left + right) // 2
    if style == "binary":
        source = np.repeat(((labels == obj.label) * 255).astype(np.uint8)[..., None], 3, axis=2)
        padded = np.pad(source, ((side, side), (side, side), (0, 0)))
    else:
        padded = np.pad(rgb, ((side, side), (side, side), (0, 0)), mode="edge")
    y0, x0 = cy - side // 2 + side, cx - side // 2 + side
    crop = padded[y0:y0 + side, x0:x0 + side]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


def yolo_boxes(path: Path, width: int, height: int) -> list[tuple[float, float, float, float]]:
    """YOLO lines ``class cx cy w h`` (normalised) as pixel boxes (x0, y0, x1, y1); every class is a chromosome."""
    boxes = []
    for line in path.read_text().split("\n"):
        fields = line.split()
        if len(fields) == 5:
            _, cx, cy, w, h = map(float, fields)
            boxes.append(((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
    return boxes


def match_centres(centres: list[tuple[float, float]], boxes: list[tuple[float, float, float, float]]) -> int:
    """Hits, one-to-one: a centre inside a box, each box used once (nearest box centre first)."""
    used, hits = set(), 0
    for x, y in centres:
        inside = [k for k, (x0, y0, x1, y1) in enumerate(boxes) if k not in used and x0 <= x <= x1 and y0 <= y <= y1]
        if inside:
            best = min(inside, key=lambda k: (x - (boxes[k][0] + boxes[k][2]) / 2) ** 2
                       + (y - (boxes[k][1] + boxes[k][3]) / 2) ** 2)
            used.add(best)
            hits += 1
    return hits


class ChromosomeModel(MicroscopyModel):
    options = (
        Option("mode", str, "spread", "spread: find and classify every object of a metaphase image; "
               "crop: classify one uploaded crop around a single object", choices=("spread", "crop")),
    )

    def _crop_settings(self) -> tuple[int, int, str]:
        spec = self.spec.input
        return int(spec["window_px"]), int(spec["network_size"]), spec["crop_style"]

    def _objects(self, rgb: np.ndarray, mode: str) -> tuple[Segmentation, list]:
        found = segment_spread(rgb.mean(axis=2), self.spec.input["segmentation"])
        if mode == "crop" and found.objects:  # the object nearest the crop's centre
            h, w = rgb.shape[:2]
            nearest = min(found.objects, key=lambda o: (o.centroid[0] - h / 2) ** 2 + (o.centroid[1] - w / 2) ** 2)
            return found, [nearest]
        return found, found.objects

    def preprocess(self, inputs: Image.Image, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        rgb = to_rgb8(inputs)
        found, objects = self._objects(rgb, options["mode"])
        window, size, style = self._crop_settings()
        crops = [object_crop(rgb, found.labels, obj, window, size, style) for obj in objects]
        batch = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
        return batch.astype(np.float32), objects

    def postprocess(self, outputs: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        names = self.spec.label_names
        predictions = []
        for obj, probabilities in zip(context, outputs):
            best = int(np.argmax(probabilities))
            top, left, bottom, right = obj.bbox
            predictions.append({"label": names[best], "probability": round(float(probabilities[best]), 4),
                                "bbox": [int(left), int(top), int(right - left), int(bottom - top)]})
        counts = {name: sum(p["label"] == name for p in predictions) for name in names}
        return {"predictions": predictions, "counts": counts}

    def render(self, inputs: Image.Image, result: dict[str, Any]) -> Image.Image:
        image = draw_boxes(to_rgb8(inputs), result["predictions"], self.spec.label_names, captions=False)
        counts = result["counts"]
        return draw_banner(image, f"chromosomes: {counts['chromosome']}   non-chromosomes: {counts['non_chromosome']}",
                           self.spec.label_names)

    def warm_up_input(self) -> Image.Image:
        from PIL import ImageDraw

        image = Image.new("RGB", (256, 256), (150, 150, 160))
        ImageDraw.Draw(image).line([(100, 100), (130, 150)], fill=(60, 40, 90), width=8)
        return image

    # ---- training and evaluation ------------------------------------------------------------------
    @staticmethod
    def _spreads(data_dir: Path) -> list[tuple[Path, Path]]:
        images = sorted(p for p in (data_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return [(image, data_dir / "labels" / f"{image.stem}.txt") for image in images
                if (data_dir / "labels" / f"{image.stem}.txt").is_file()]

    def training_data(self, data_dir: Path) -> Iterator[tuple[np.ndarray, int, str]]:
        """Every segmented object; chromosome when at least half its pixels lie inside true boxes."""
        window, size, style = self._crop_settings()
        for image_path, label_path in self._spreads(data_dir):
            with Image.open(image_path) as image:
                rgb = to_rgb8(image)
            found, _ = self._objects(rgb, "spread")
            inside = np.zeros(rgb.shape[:2], bool)
            for x0, y0, x1, y1 in yolo_boxes(label_path, rgb.shape[1], rgb.shape[0]):
                inside[max(0, int(y0)):int(np.ceil(y1)) + 1, max(0, int(x0)):int(np.ceil(x1)) + 1] = True
            for obj in found.objects:
                rows, cols = obj.coords[:, 0], obj.coords[:, 1]
                label = 0 if inside[rows, cols].mean() >= 0.5 else 1
                yield object_crop(rgb, found.labels, obj, window, size, style), label, f"spread {image_path.stem}"

    def evaluate_detection(self, data_dir: Path, groups: set[str]) -> dict[str, Any]:
        """Per held-out spread: chromosome hits (box centre inside a true box, one-to-one), count error, and the
        segmentation's own limits: true chromosomes left merged with another (their centres in one object),
        and fragments (objects beyond the first whose centre lies in a true box, whatever their class)."""
        per_group, tp, fp, fn, merged, fragments, total = {}, 0, 0, 0, 0, 0, 0
        defaults = {option.name: option.default for option in self.declared_options()}
        for image_path, label_path in self._spreads(data_dir):
            group = f"spread {image_path.stem}"
            if group not in groups:
                continue
            with Image.open(image_path) as image:
                image = image.convert("RGB")
                result = self.predict(image, defaults)
                found = segment_spread(to_rgb8(image).mean(axis=2), self.spec.input["segmentation"])
            boxes = yolo_boxes(label_path, image.width, image.height)
            chromosomes = [p["bbox"] for p in result["predictions"] if p["label"] == "chromosome"]
            hits = match_centres([(x + w / 2, y + h / 2) for x, y, w, h in chromosomes], boxes)
            object_of = [found.labels[min(int((y0 + y1) / 2), image.height - 1), min(int((x0 + x1) / 2), image.width - 1)]
                         for x0, y0, x1, y1 in boxes]
            ids, counts = np.unique([o for o in object_of if o], return_counts=True)
            lost = int(sum(c - 1 for c in counts))
            centres = [((o.bbox[1] + o.bbox[3]) / 2, (o.bbox[0] + o.bbox[2]) / 2) for o in found.objects]
            in_boxes = [c for c in centres if any(x0 <= c[0] <= x1 and y0 <= c[1] <= y1 for x0, y0, x1, y1 in boxes)]
            pieces = len(in_boxes) - match_centres(in_boxes, boxes)
            per_group[group] = {"true": len(boxes), "predicted": len(chromosomes), "hits": hits,
                                "count_error": round(abs(len(chromosomes) - len(boxes)) / len(boxes), 4),
                                "merged_by_segmentation": lost, "fragments_by_segmentation": pieces}
            tp, fp, fn = tp + hits, fp + len(chromosomes) - hits, fn + len(boxes) - hits
            merged, fragments, total = merged + lost, fragments + pieces, total + len(boxes)
        precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
        return {"tp": tp, "fp": fp, "fn": fn, "precision": round(precision, 4), "recall": round(recall, 4),
                "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
                "merged_rate": round(merged / max(1, total), 4), "fragment_rate": round(fragments / max(1, total), 4),
                "per_group": per_group}


MODEL_CLASS = ChromosomeModel
