"""Protein localisation per cell in 4-channel Human Protein Atlas images (weakly labelled, multi-label).

Nuclei are found in the blue channel (Otsu, then a distance-transform watershed splits touching nuclei);
cells grow from them by a watershed over the smoothed red + yellow + blue signal, inside a cell-body
threshold. Each cell is cut out with its neighbours blanked, scaled to the network's input and classified
into the 28 compartments of the HPA 2018 scheme with independent sigmoids; each class has its own
threshold, calibrated on validation fields. Field labels are the union over cells.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, segmentation

from core.errors import ClientError, UnsupportedImage
from core.imageio import decode_image, grey_to_unit, tiff_channels
from core.input_spec import InputSpec
from core.model_base import MicroscopyModel
from core.multilabel import field_scores
from core.options import Option

CHANNELS = ("red", "green", "blue", "yellow")


@dataclass
class Field:
    channels: np.ndarray  # H×W×4 float32 in 0..1, in CHANNELS order

    @property
    def size(self) -> tuple[int, int]:
        return self.channels.shape[1], self.channels.shape[0]


def segment_cells(channels: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Labelled cells (0 = background), each grown from one nucleus."""
    red, _, blue, yellow = (channels[..., k] for k in range(4))
    sigma = params["sigma"]
    blue_s = filters.gaussian(blue, sigma)
    if blue_s.max() - blue_s.min() < 1e-3:
        return np.zeros(blue.shape, np.int32)
    nuclei_mask = blue_s > filters.threshold_otsu(blue_s)
    nuclei_mask = morphology.remove_small_objects(ndi.binary_fill_holes(nuclei_mask), max_size=params["min_nucleus_px"])
    if not nuclei_mask.any():
        return np.zeros(blue.shape, np.int32)
    distance = ndi.distance_transform_edt(nuclei_mask)
    peaks = feature.peak_local_max(filters.gaussian(distance, 2), min_distance=params["nucleus_min_distance"],
                                   labels=measure.label(nuclei_mask), exclude_border=False)
    markers = np.zeros(blue.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei = segmentation.watershed(-distance, markers, mask=nuclei_mask)
    body = filters.gaussian(red + yellow + blue, sigma)
    cell_mask = (body > filters.threshold_otsu(body) * params["cell_threshold_factor"]) | nuclei_mask
    cells = segmentation.watershed(-body, nuclei, mask=cell_mask)
    return cells.astype(np.int32)


def cell_crop(channels: np.ndarray, cells: np.ndarray, region, size: int) -> np.ndarray:
    """The cell's square neighbourhood, other cells blanked, as the network's RGB at size×size (0..255)."""
    top, left, bottom, right = region.bbox
    side = max(bottom - top, right - left)
    cy, cx = (top + bottom) // 2, (left + right) // 2
    y0, x0 = cy - side // 2, cx - side // 2
    own = cells == region.label
    composite = np.stack([(channels[..., 0] + channels[..., 3]) / 2, channels[..., 1], channels[..., 2]], -1)
    composite = composite * own[..., None]
    padded = np.pad(composite, ((side, side), (side, side), (0, 0)))
    window = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
    image = Image.fromarray((np.clip(window, 0, 1) * 255).astype(np.uint8))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding (pycocotools), JSON-ready."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


@dataclass(frozen=True)
class ProteinInput(InputSpec):
    segmentation: dict[str, Any]   # parameters of segment_cells
    composite: str                 # how the four channels become the network's RGB, in words


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

    @property
    def thresholds(self) -> np.ndarray:
        values = self.spec.meta.get("inference", {}).get("thresholds")
        return np.array(values if values else [0.5] * len(self.spec.labels), np.float32)

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

    def segment(self, field: Field, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
        """(channels at the model's scale, labelled cells, the scale used)."""
        channels, scale = field.channels, options.get("scale", 1.0)
        if scale != 1.0:
            height, width = channels.shape[:2]
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            channels = np.stack([np.asarray(Image.fromarray(channels[..., k]).resize(size, Image.Resampling.BILINEAR))
                                 for k in range(4)], axis=-1)
        cells = segment_cells(channels, self.input.segmentation)
        if options.get("drop_border_cells"):
            cells = segmentation.clear_border(cells)
        return channels, cells, scale

    def preprocess(self, inputs: Field, options: dict[str, Any]) -> tuple[np.ndarray, Any]:
        channels, cells, scale = self.segment(inputs, options)
        regions = measure.regionprops(cells)
        batch = np.stack([cell_crop(channels, cells, r, self.input.network_px) for r in regions]) if regions \
            else np.zeros((0, self.input.network_px, self.input.network_px, 3), np.uint8)
        return batch.astype(np.float32), (cells, regions, scale, inputs.size)

    def postprocess(self, probabilities: np.ndarray, context: Any, options: dict[str, Any]) -> dict[str, Any]:
        cells, regions, scale, (width, height) = context
        names = self.spec.label_names
        thresholds = np.clip(self.thresholds * options["threshold_scale"], 0, 1)
        predictions = []
        for number, (region, per_class) in enumerate(zip(regions, probabilities), 1):
            mask = cells == region.label
            if scale != 1.0:
                mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
            ys, xs = np.nonzero(mask)
            above = np.flatnonzero(per_class >= thresholds)
            ranked = above[np.argsort(-per_class[above])]
            top = int(np.argmax(per_class))
            predictions.append({
                "cell_id": number,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                if len(xs) else [0, 0, 0, 0],
                "mask": rle(mask),
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
        """RGB composite (red, green, blue) with cell outlines and each cell's top label."""
        from pycocotools import mask as coco_mask

        rgb = (np.clip(inputs.channels[..., :3], 0, 1) * 255).astype(np.uint8).copy()
        for prediction in result["predictions"]:
            encoded = {"size": prediction["mask"]["size"], "counts": prediction["mask"]["counts"].encode()}
            rgb[segmentation.find_boundaries(coco_mask.decode(encoded).astype(bool))] = (255, 255, 255)
        image = Image.fromarray(rgb)
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=max(10, round(image.width / 50)))
        for prediction in result["predictions"]:
            x, y, w, h = prediction["bbox"]
            text = prediction["labels"][0]["label"] if prediction["labels"] else "(none)"
            draw.text((x + w / 2, y + h / 2), text, fill=(255, 255, 0), font=font, anchor="mm",
                      stroke_width=2, stroke_fill=(0, 0, 0))
        return image

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
