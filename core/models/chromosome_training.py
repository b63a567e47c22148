"""Training and evaluation of the chromosome model on metaphase spreads with YOLO boxes
(``images/<name>.png`` + ``labels/<name>.txt``); every spread is one group."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from core.evaluation import Box, f1_counts, match_centres
from core.imageio import to_rgb8
from core.models.chromosome import segment_spread
from core.training.recipe import TrainingRecipe

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def yolo_boxes(path: Path, width: int, height: int) -> list[Box]:
    """YOLO lines ``class cx cy w h`` (normalised) as pixel boxes (x0, y0, x1, y1); every class is a chromosome."""
    boxes = []
    for line in path.read_text().split("\n"):
        fields = line.split()
        if len(fields) == 5:
            _, cx, cy, w, h = map(float, fields)
            boxes.append(((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
    return boxes


def spreads(data_dir: Path) -> list[tuple[Path, Path]]:
    """(image, YOLO label file) of every labelled spread."""
    images = sorted(p for p in (data_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(image, data_dir / "labels" / f"{image.stem}.txt") for image in images
            if (data_dir / "labels" / f"{image.stem}.txt").is_file()]


class ChromosomeTraining(TrainingRecipe):
    def examples(self, data_dir: Path) -> Iterator[tuple[np.ndarray, int, str]]:
        """Every segmented object; chromosome when at least half its pixels lie inside true boxes."""
        for image_path, label_path in spreads(data_dir):
            with Image.open(image_path) as image:
                rgb = to_rgb8(image)
            found, _ = self.model.objects(rgb, "spread")
            inside = np.zeros(rgb.shape[:2], bool)
            for x0, y0, x1, y1 in yolo_boxes(label_path, rgb.shape[1], rgb.shape[0]):
                inside[max(0, int(y0)):int(np.ceil(y1)) + 1, max(0, int(x0)):int(np.ceil(x1)) + 1] = True
            for obj in found.objects:
                rows, cols = obj.coords[:, 0], obj.coords[:, 1]
                label = 0 if inside[rows, cols].mean() >= 0.5 else 1
                yield self.model.crop(rgb, found, obj), label, f"spread {image_path.stem}"

    def uploads(self, data_dir: Path) -> list[tuple[dict[str, Path], str]]:
        return [({"image": image}, f"spread {image.stem}") for image, _ in spreads(data_dir)]

    def evaluate(self, data_dir: Path, groups: set[str]) -> dict[str, Any]:
        """Per held-out spread: chromosome hits (box centre inside a true box, one-to-one), count error, and the
        segmentation's own limits: true chromosomes left merged with another (their centres in one object),
        and fragments (objects beyond the first whose centre lies in a true box, whatever their class)."""
        model = self.model
        per_group, tp, fp, fn, merged, fragments, total = {}, 0, 0, 0, 0, 0, 0
        defaults = {option.name: option.default for option in model.declared_options()}
        for image_path, label_path in spreads(data_dir):
            group = f"spread {image_path.stem}"
            if group not in groups:
                continue
            with Image.open(image_path) as image:
                image = image.convert("RGB")
                result = model.predict(image, defaults)
                found = segment_spread(to_rgb8(image).mean(axis=2), model.input.segmentation)
            boxes = yolo_boxes(label_path, image.width, image.height)
            chromosome = model.spec.label_names[0]  # label 0: inside the true boxes (see examples)
            chromosomes = [p["bbox"] for p in result["predictions"] if p["label"] == chromosome]
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
        return {**f1_counts(tp, fp, fn), "merged_rate": round(merged / max(1, total), 4),
                "fragment_rate": round(fragments / max(1, total), 4), "per_group": per_group}


RECIPE = ChromosomeTraining
