"""Chromosome counting: metaphase spread → every dark object, classified chromosome or not, and a count.

Segmentation (scikit-image): a local (adaptive) threshold of the smoothed grey image, closing and hole
filling, a size filter, a watershed from dark cores that splits only oversized components (touching
chromosomes), and the pairing of separated sister chromatids (two close, parallel objects of similar
size are one chromosome). Each object becomes a crop (its binary mask, or the colour image around it) at a fixed
pixel scale, so object size is kept, and a small CNN says chromosome or non-chromosome (interphase-nucleus
fragments, debris, stain).

Where the model ships a detector (model.json ``detector``, core/models/chromosome_detector.py), a spread is
read by it instead: one chromosome per peak of a learned centre heatmap, each with its outline, mask,
length and orientation from the segmentation's pixels inside its box; segmented objects outside every
chromosome's box are the non-chromosomes. ``mode=crop`` always uses the crop classifier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from core.drawing import colour_for, draw_banner, draw_boxes
from core.imageio import to_rgb8
from core.input_spec import InputSpec
from core.model_base import MicroscopyModel
from core.models.chromosome_detector import (STRIDE, decode, dihedral_output, median_size, reading_scale,
                                             stitched_output, to_levels, views_at)
from core.options import Option
from core.outlines import polygon, rle


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


@dataclass(frozen=True)
class _Box:
    """A detection's [x, y, width, height] as the (top, left, bottom, right) ``bbox`` object_crop reads."""
    xywh: list[int]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.xywh
        return y, x, y + h, x + w


def medial_length(mask: np.ndarray) -> float:
    """Length of an elongated object along its medial axis: the skeleton's length (diagonal steps √2, as a
    spanning tree so a staircase is not counted twice) plus the half-width the skeleton stops short at each end."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial import cKDTree

    skeleton = morphology.skeletonize(mask)
    points = np.argwhere(skeleton)
    if len(points) < 2:
        return float(mask.any())
    pairs = cKDTree(points).query_pairs(1.5, output_type="ndarray")
    steps = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
    tree = minimum_spanning_tree(coo_matrix((steps, (pairs[:, 0], pairs[:, 1])), shape=(len(points),) * 2))
    half_width = float(ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][skeleton].mean())
    return float(tree.sum()) + 2 * half_width


def object_shape(inside: np.ndarray, left: int, top: int, image_shape: tuple[int, int]) -> dict[str, Any]:
    """What a karyotyping tool reads of an object whose pixels are ``inside`` (a mask of its box, whose corner
    is at ``left``, ``top`` in an image of ``image_shape``): an outline polygon of its largest part, a COCO
    RLE mask in the whole image, its length (pixels along the largest part's medial axis) and orientation
    (degrees anticlockwise from the image's x axis as shown, 0-180, of that part's major axis)."""
    mask = rle(inside, left, top, image_shape)
    parts = measure.label(inside)
    if parts.max() == 0:
        return {"outline": [], "mask": mask, "length_px": 0, "orientation_deg": None}
    largest = max(measure.regionprops(parts), key=lambda p: p.area)
    return {"outline": polygon(parts == largest.label, left, top), "mask": mask,
            "length_px": round(medial_length(largest.image), 1),
            "orientation_deg": round(float((np.degrees(largest.orientation) + 90) % 180), 1)}


@dataclass(frozen=True)
class ChromosomeInput(InputSpec):
    segmentation: dict[str, Any]   # parameters of segment_spread
    window_px: int                 # the smallest square cut round an object (scaled to network_input)
    crop_style: str                # "colour": the image round the object; "binary": its mask


class ChromosomeModel(MicroscopyModel):
    Input = ChromosomeInput
    options = (
        Option("mode", str, "spread: find and classify every object of a metaphase image; "
               "crop: classify one uploaded crop around a single object", choices=("spread", "crop")),
    )

    #: the chromosome detector (model.json ``detector``, core/models/chromosome_detector.py): reads spreads
    companions = ("detector",)

    @property
    def detector_spec(self) -> dict[str, Any] | None:
        return self.spec.meta.get("detector")

    def predict(self, inputs: Image.Image, options: dict[str, Any]) -> dict[str, Any]:
        if options["mode"] == "spread" and self.companion_forward("detector") is not None:
            return self.detect_spread(to_rgb8(inputs))
        return super().predict(inputs, options)

    def detect_spread(self, rgb: np.ndarray) -> dict[str, Any]:
        """Every chromosome the detector finds, and the segmented objects outside all their boxes."""
        spec = self.detector_spec
        height, width = rgb.shape[:2]
        seen = to_levels(rgb, spec["levels"]) if spec.get("levels") else rgb
        scale = spec["scale"]
        plain = self.detector_output(seen, scale)
        if spec.get("reference_size_px"):  # the plain view at the base scale measures the chromosomes
            first = decode(plain, spec["threshold"], spec.get("max_overlap", 1.0))
            scale = reading_scale(median_size([tuple(v / scale for v in d.box) for d in first]), scale,
                                  spec["reference_size_px"], spec.get("max_scale", scale))
            if scale != spec["scale"]:
                plain = self.detector_output(seen, scale)
        output = self.detector_output(seen, scale, plain) if spec.get("tta") else plain
        found = segment_spread(rgb.mean(axis=2), self.input.segmentation)
        foreground = found.labels > 0
        predictions, covered = [], np.zeros(foreground.shape, bool)
        for detection in decode(output, spec["threshold"], spec.get("max_overlap", 1.0)):
            x0, y0, x1, y1 = (int(round(v / scale)) for v in detection.box)
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, max(x1, x0 + 1)), min(height, max(y1, y0 + 1))
            if x0 >= x1 or y0 >= y1:
                continue
            covered[y0:y1, x0:x1] = True
            predictions.append({"label": "chromosome", "probability": round(detection.score, 4),
                                "bbox": [x0, y0, x1 - x0, y1 - y0],
                                **object_shape(foreground[y0:y1, x0:x1], x0, y0, foreground.shape)})
        if predictions:  # the crop classifier on each chromosome, for the domain check (core.domain) only
            self._run_batches(np.stack([object_crop(rgb, found.labels, _Box(p["bbox"]), self.input.window_px,
                                                    self.input.network_px, "colour") for p in predictions]))
        heat = output[..., 0]
        for obj in found.objects:
            row, col = (int(v) for v in obj.centroid)
            if covered[row, col]:
                continue
            top, left, bottom, right = obj.bbox
            cell = heat[min(heat.shape[0] - 1, int(row * scale) // STRIDE),
                        min(heat.shape[1] - 1, int(col * scale) // STRIDE)]
            predictions.append({"label": "non_chromosome", "probability": round(1 - float(cell), 4),
                                "bbox": [int(left), int(top), int(right - left), int(bottom - top)],
                                **object_shape(obj.image, left, top, foreground.shape)})
        counts = {name: sum(p["label"] == name for p in predictions) for name in self.spec.label_names}
        return {"predictions": predictions, "counts": counts, "read_at_scale": round(scale, 4)}

    def detector_output(self, seen: np.ndarray, scale: float, plain: np.ndarray | None = None) -> np.ndarray:
        """The detector's stitched output over a spread (at the training levels) resized by ``scale``; given
        ``plain``, that output, its heatmap averaged over the 8 dihedral views, or over
        ``detector.enlarged_views`` when read larger than the base scale (windows quiet in ``plain`` excepted:
        core.models.chromosome_detector.dihedral_output)."""
        spec, (height, width) = self.detector_spec, seen.shape[:2]
        small = Image.fromarray(seen).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                             Image.Resampling.BILINEAR)
        detector = self.companion_forward("detector")

        def forward(windows: np.ndarray) -> np.ndarray:
            return np.concatenate([detector(windows[start:start + self.batch_size])
                                   for start in range(0, len(windows), self.batch_size)])

        image = np.asarray(small, np.float32)
        if plain is None:
            return stitched_output(forward, image, spec["tile"], spec["margin"])
        views = views_at(scale, spec["scale"], spec.get("enlarged_views", 8))
        return dihedral_output(forward, image, spec["tile"], spec["margin"], plain, spec.get("quiet_below", 0.0), views)

    def objects(self, rgb: np.ndarray, mode: str) -> tuple[Segmentation, list]:
        """The segmentation and the objects to classify: all of them, or (``crop``) the one nearest the centre."""
        found = segment_spread(rgb.mean(axis=2), self.input.segmentation)
        if mode == "crop" and found.objects:  # the object nearest the crop's centre
            h, w = rgb.shape[:2]
            nearest = min(found.objects, key=lambda o: (o.centroid[0] - h / 2) ** 2 + (o.centroid[1] - w / 2) ** 2)
            return found, [nearest]
        return found, found.objects

    def preprocess(self, inputs: Image.Image, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        rgb = to_rgb8(inputs)
        found, objects = self.objects(rgb, options["mode"])
        crops = [self.crop(rgb, found, obj) for obj in objects]
        size = self.input.network_px
        batch = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
        return batch.astype(np.float32), objects

    def crop(self, rgb: np.ndarray, found: Segmentation, obj) -> np.ndarray:
        """The network's input for one object."""
        return object_crop(rgb, found.labels, obj, self.input.window_px, self.input.network_px, self.input.crop_style)

    def postprocess(self, probabilities: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        names = self.spec.label_names
        predictions = []
        for obj, per_class in zip(context, probabilities):
            best = int(np.argmax(per_class))
            top, left, bottom, right = obj.bbox
            predictions.append({"label": names[best], "probability": round(float(per_class[best]), 4),
                                "bbox": [int(left), int(top), int(right - left), int(bottom - top)]})
        counts = {name: sum(p["label"] == name for p in predictions) for name in names}
        return {"predictions": predictions, "counts": counts}

    def render(self, inputs: Image.Image, result: dict[str, Any]) -> Image.Image:
        image = draw_boxes(to_rgb8(inputs), result["predictions"], self.spec.label_names, captions=False)
        draw = ImageDraw.Draw(image)
        for prediction in result["predictions"]:
            if len(prediction.get("outline", [])) > 2:
                colour = colour_for(self.spec.label_names.index(prediction["label"]))
                draw.polygon([tuple(p) for p in prediction["outline"]], outline=colour)
        summary = "   ".join(f"{name.replace('_', '-')}s: {count}" for name, count in result["counts"].items())
        return draw_banner(image, summary, self.spec.label_names)

    def warm_up_input(self) -> Image.Image:
        image = Image.new("RGB", (256, 256), (150, 150, 160))
        ImageDraw.Draw(image).line([(100, 100), (130, 150)], fill=(60, 40, 90), width=8)
        return image


MODEL_CLASS = ChromosomeModel
