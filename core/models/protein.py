"""Protein localisation per cell in 4-channel Human Protein Atlas images (weakly labelled, multi-label).

Nuclei are found in the blue channel (Otsu, then a distance-transform watershed splits touching nuclei);
cells grow from them by a watershed over the smoothed red + yellow + blue signal, inside a cell-body
threshold. Each cell is described by measures of where its green lies (core.models.protein_features) and
a logistic regression per compartment (the "network": standardisation + one sigmoid layer) gives its
probabilities. A field's score per class is a percentile over its cells; each class has its own threshold
chosen on fields the classifier had not seen, and classes the data could not teach have none: they are
never answered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, segmentation

from core.errors import AssetError, ClientError, UnsupportedImage
from core.imageio import decode_image, grey_to_unit, tiff_channels
from core.input_spec import InputSpec
from core import deadline, fonts
from core.drawing import distinct_colours, inside, wrapped
from core.model_base import MicroscopyModel
from core.models.protein_features import FEATURE_NAMES, cell_features
from core.multilabel import field_scores
from core.options import Option
from core.outlines import rle

CHANNELS = ("red", "green", "blue", "yellow")
NO_LABEL = (150, 150, 150)  # outline of a cell with no compartment above its threshold


@dataclass
class Field:
    channels: np.ndarray  # H×W×4 float32 in 0..1, in CHANNELS order

    @property
    def size(self) -> tuple[int, int]:
        return self.channels.shape[1], self.channels.shape[0]


def segment_cells(channels: np.ndarray, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Labelled cells (0 = background), each grown from one nucleus, and those nuclei (same labels)."""
    red, _, blue, yellow = (channels[..., k] for k in range(4))
    sigma = params["sigma"]
    blue_s = filters.gaussian(blue, sigma)
    if blue_s.max() - blue_s.min() < 1e-3:
        return np.zeros(blue.shape, np.int32), np.zeros(blue.shape, np.int32)
    nuclei_mask = blue_s > filters.threshold_otsu(blue_s)
    nuclei_mask = morphology.remove_small_objects(ndi.binary_fill_holes(nuclei_mask), max_size=params["min_nucleus_px"])
    if not nuclei_mask.any():
        return np.zeros(blue.shape, np.int32), np.zeros(blue.shape, np.int32)
    distance = ndi.distance_transform_edt(nuclei_mask)
    peaks = feature.peak_local_max(filters.gaussian(distance, 2), min_distance=params["nucleus_min_distance"],
                                   labels=measure.label(nuclei_mask), exclude_border=False)
    markers = np.zeros(blue.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei = segmentation.watershed(-distance, markers, mask=nuclei_mask)
    body = filters.gaussian(red + yellow + blue, sigma)
    cell_mask = (body > filters.threshold_otsu(body) * params["cell_threshold_factor"]) | nuclei_mask
    cells = segmentation.watershed(-body, nuclei, mask=cell_mask)
    return cells.astype(np.int32), nuclei.astype(np.int32)


@dataclass(frozen=True)
class ProteinInput(InputSpec):
    segmentation: dict[str, Any]   # parameters of segment_cells
    measures: tuple[str, ...]      # the classifier's inputs, in order (core.models.protein_features)


class ProteinModel(MicroscopyModel):
    Input = ProteinInput
    options = (
        Option("threshold_scale", float, "multiplies every class's calibrated threshold: below 1 reports "
               "more labels (recall), above 1 fewer (precision)", minimum=0.1, maximum=5.0),
        Option("drop_border_cells", bool, "leave out cells cut by the image border"),
        Option("scale", float, "resize factor to the model's scale (0.25 for 2048x2048 HPA fields)",
               minimum=0.1, maximum=4.0),
    )
    channel_fields = CHANNELS  # uploads besides 'image' (listed in the Swagger form)
    rows_per_forward_thread = 64  # a logistic layer: each call's overhead, not the caches, sets its pace

    def __init__(self, spec):
        super().__init__(spec)
        if self.input.measures != FEATURE_NAMES or self.input.network_input != (len(FEATURE_NAMES),):
            raise AssetError(f"{spec.source}: 'input.measures' and 'network_input' must be this code's measures "
                             f"({len(FEATURE_NAMES)}: {', '.join(FEATURE_NAMES)}); retrain the model")

    @property
    def thresholds(self) -> np.ndarray:
        """Per class; infinite for a class that is never answered (``null`` in model.json)."""
        values = self.spec.meta.get("inference", {}).get("thresholds") or [0.5] * len(self.spec.labels)
        return np.array([np.inf if value is None else value for value in values], np.float64)

    def read_inputs(self, uploads: Mapping[str, bytes], max_pixels: int) -> Field:
        if all(name in uploads for name in CHANNELS):
            planes = [grey_to_unit(decode_image(uploads[name], max_pixels, name)) for name in CHANNELS]
            if len({plane.shape for plane in planes}) != 1:
                sizes = ", ".join(f"{n} {p.shape[1]}x{p.shape[0]}" for n, p in zip(CHANNELS, planes))
                raise ClientError(f"the four channels differ in size ({sizes})")
            return Field(np.stack(planes, axis=-1))
        if "image" in uploads:
            data = uploads["image"]
            if data[:4] in (b"II*\x00", b"MM\x00*"):
                try:
                    stack = tiff_channels(data, max_pixels)
                except ClientError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a corrupt TIFF is the client's file
                    raise UnsupportedImage(f"the 'image' TIFF could not be read: {exc}") from None
                if stack is not None:
                    return Field(stack)
            image = decode_image(data, max_pixels)
            if image.mode != "RGBA":
                raise ClientError(f"the 'image' upload has mode {image.mode}; send four channels: an RGBA PNG "
                                  f"(yellow as alpha), a 4-page TIFF, or the fields red, green, blue, yellow")
            return Field(np.asarray(image.convert("RGBA"), np.float32) / 255.0)
        missing = [name for name in CHANNELS if name not in uploads]
        raise ClientError(f"send the channels as multipart files red, green, blue and yellow (missing: "
                          f"{', '.join(missing)}), or one 4-channel image in 'image'")

    def segment(self, field: Field, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(channels at the model's scale, labelled cells, their nuclei, the scale used)."""
        channels, scale = field.channels, options.get("scale", 1.0)
        if scale != 1.0:
            height, width = channels.shape[:2]
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            channels = np.stack([np.asarray(Image.fromarray(channels[..., k]).resize(size, Image.Resampling.BILINEAR))
                                 for k in range(4)], axis=-1)
        cells, nuclei = segment_cells(channels, self.input.segmentation)
        if options.get("drop_border_cells"):
            cells = segmentation.clear_border(cells)
        return channels, cells, nuclei, scale

    def preprocess(self, inputs: Field, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        channels, cells, nuclei, scale = self.segment(inputs, options)
        return cell_features(channels, cells, nuclei), (cells, measure.regionprops(cells), scale, inputs.size)

    def postprocess(self, probabilities: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        cells, regions, scale, (width, height) = context
        names = self.spec.label_names
        thresholds = np.clip(self.thresholds * options["threshold_scale"], 0, 1)
        thresholds[~np.isfinite(self.thresholds)] = np.inf
        answered = np.isfinite(thresholds)
        # The labels in the upload's frame, resized once: nearest-neighbour sampling picks the same source pixel
        # whatever its value, so each cell's mask is the one its own mask resized would give.
        labels = cells if scale == 1.0 else np.asarray(
            Image.fromarray(cells.astype(np.int32)).resize((width, height), Image.Resampling.NEAREST))
        boxes = ndi.find_objects(labels)  # per label, the slices round its pixels (None: it has none)
        predictions = []
        for number, (region, per_class) in enumerate(zip(regions, probabilities), 1):
            deadline.check()  # thousands of cells in noise take a while
            box = boxes[region.label - 1] if region.label <= len(boxes) else None
            mask = (rle(labels[box] == region.label, box[1].start, box[0].start, labels.shape) if box is not None
                    else rle(np.zeros((0, 0), bool), size=labels.shape))
            above = np.flatnonzero(per_class >= thresholds)
            ranked = above[np.argsort(-per_class[above])]
            top = int(np.argmax(np.where(answered, per_class, -1.0)))  # the best class it may answer
            predictions.append({
                "cell_id": number,
                "bbox": [box[1].start, box[0].start, box[1].stop - box[1].start, box[0].stop - box[0].start]
                if box is not None else [0, 0, 0, 0],
                "mask": mask,
                "label": names[top], "probability": round(float(per_class[top]), 4),
                "labels": [{"id": int(k), "label": names[k], "probability": round(float(per_class[k]), 4)}
                           for k in ranked],
            })
        field = field_scores(probabilities) if len(probabilities) else np.zeros(len(names))  # as training's report
        above = np.flatnonzero(field >= thresholds)
        image_labels = [{"id": int(k), "label": names[k], "probability": round(float(field[k]), 4)}
                        for k in above[np.argsort(-field[above])]]
        return {"predictions": predictions, "image_labels": image_labels, "cell_count": len(predictions)}

    def render(self, inputs: Field, result: dict[str, Any]) -> Image.Image:
        """The field (red, green, blue; each stretched to its 99.5th percentile) with every cell outlined in
        the colour of its top compartment and numbered as its ``cell_id``; above it the cell count and the
        field's labels, beside it the colour key with the number of cells per compartment."""
        from pycocotools import mask as coco_mask

        planes = inputs.channels[..., :3]
        top = np.maximum(np.percentile(planes, 99.5, axis=(0, 1)), 1e-6)
        image = Image.fromarray((np.clip(planes / top, 0, 1) * 255).astype(np.uint8))
        rgb = np.asarray(image).copy()
        key = self.colour_key()
        for prediction in result["predictions"]:
            encoded = {"size": prediction["mask"]["size"], "counts": prediction["mask"]["counts"].encode()}
            outline = segmentation.find_boundaries(coco_mask.decode(encoded).astype(bool), mode="inner")
            rgb[outline] = key.get(prediction["labels"][0]["label"] if prediction["labels"] else None, NO_LABEL)
        image = Image.fromarray(rgb)
        draw = ImageDraw.Draw(image)
        font = self.font(image.width)
        for text, box in self.number_boxes(result["predictions"], draw, font, image.size):
            draw.text(box[:2], text, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        return self.frame(image, result, key, font)

    def colour_key(self) -> dict[str | None, tuple[int, int, int]]:
        """One colour per class the model answers (never-answered classes need none)."""
        answered = [name for name, t in zip(self.spec.label_names, self.thresholds) if np.isfinite(t)]
        return dict(zip(answered, distinct_colours(len(answered))))

    @staticmethod
    def font(width: int) -> ImageFont.FreeTypeFont:
        return fonts.font(max(11, round(width / 45)))

    @staticmethod
    def number_boxes(predictions: list[dict[str, Any]], draw: ImageDraw.ImageDraw, font, size: tuple[int, int]
                     ) -> list[tuple[str, tuple[float, float, float, float]]]:
        """Each cell's number and its text box, centred on the cell's bounding box and moved inside the image."""
        placed = []
        for prediction in predictions:
            x, y, w, h = prediction["bbox"]
            text = str(prediction["cell_id"])
            left, top, right, bottom = draw.textbbox((x + w / 2, y + h / 2), text, font=font, anchor="mm",
                                                     stroke_width=2)
            dx, dy = inside((left, top, right, bottom), *size)
            placed.append((text, (left + dx, top + dy, right + dx, bottom + dy)))
        return placed

    def frame(self, image: Image.Image, result: dict[str, Any], key: dict[str | None, tuple[int, int, int]],
              font) -> Image.Image:
        """``image`` with the banner above (cell count, field labels) and the colour key beside it."""
        counts: dict[str | None, int] = {}
        for prediction in result["predictions"]:
            name = prediction["labels"][0]["label"] if prediction["labels"] else None
            counts[name] = counts.get(name, 0) + 1
        rows = [(key[name], f"{name}: {counts[name]}") for name in key if name in counts]
        if None in counts:
            rows.append((NO_LABEL, f"no label above threshold: {counts[None]}"))
        scratch = ImageDraw.Draw(image)
        line = round(font.size * 1.5)
        panel = round(max([scratch.textlength(text, font=font) for _, text in rows] +
                          [scratch.textlength("top compartment (cells)", font=font)]) + 2.5 * font.size)
        labels = ", ".join(f"{label['label']} {label['probability']:.2f}" for label in result["image_labels"])
        banner = wrapped(scratch, f"{result['cell_count']} cells. Field: "
                         f"{labels or 'no compartment above its threshold'}", font, image.width + panel - font.size)
        top = line * len(banner) + font.size // 2
        out = Image.new("RGB", (image.width + panel, max(image.height, line * (len(rows) + 1)) + top), "white")
        out.paste(image, (0, top))
        draw = ImageDraw.Draw(out)
        for k, text in enumerate(banner):
            draw.text((font.size // 2, font.size // 4 + k * line), text, fill="black", font=font)
        x = image.width + font.size // 2
        draw.text((x, top), "top compartment (cells)", fill="black", font=font)
        for k, (colour, text) in enumerate(rows, 1):
            y = top + k * line
            draw.rectangle([x, y + 2, x + font.size - 2, y + font.size], fill=colour, outline="black")
            draw.text((x + font.size + 4, y), text, fill="black", font=font)
        return out

    def warm_up_input(self) -> Field:
        yy, xx = np.mgrid[:256, :256]
        channels = np.zeros((256, 256, 4), np.float32)
        for cx, cy in ((80, 90), (180, 160)):
            r2 = (xx - cx) ** 2 + (yy - cy) ** 2
            channels[..., 2] += (r2 < 20 ** 2) * 0.8
            channels[..., 0] += (r2 < 45 ** 2) * 0.4
            channels[..., 1] += (r2 < 45 ** 2) * 0.3
            channels[..., 3] += (r2 < 45 ** 2) * 0.3
        return Field(np.clip(channels, 0, 1))


MODEL_CLASS = ProteinModel
