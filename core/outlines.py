"""An object's mask as the answer gives it: a COCO run-length encoding and an outline polygon."""
from __future__ import annotations

from typing import Any

import numpy as np
from skimage import measure


def rle(mask: np.ndarray, left: int = 0, top: int = 0, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """COCO run-length encoding (pycocotools), JSON-ready, of ``mask`` placed with its corner at (``left``,
    ``top``) in an image of ``size`` (height, width; the mask's own by default). The runs are found in the
    mask alone, so an object's box costs what its box holds, not what the whole image does."""
    from pycocotools import mask as coco_mask

    height, width = size or mask.shape
    rows = mask.shape[0]
    # column-major order, as COCO counts; a zero row under each column keeps runs from joining two columns
    flat = np.pad(mask.astype(bool), ((0, 1), (0, 0))).T.ravel()
    edges = np.flatnonzero(np.diff(flat, prepend=False, append=False))  # starts and ends of runs, alternating
    column, row = np.divmod(edges, rows + 1)
    in_image = (left + column) * height + top + row
    joined = np.flatnonzero(in_image[1:-1:2] == in_image[2::2]) * 2 + 1  # a run ending where the next starts
    in_image = np.delete(in_image, np.concatenate([joined, joined + 1]))  # (a mask as tall as the image)
    counts = np.diff(in_image, prepend=0, append=height * width)
    if len(counts) > 1 and counts[-1] == 0:  # the last run reaches the image's end
        counts = counts[:-1]
    encoded = coco_mask.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def polygon(mask: np.ndarray, left: int = 0, top: int = 0, tolerance: float = 0.5) -> list[list[float]]:
    """The outline of the mask's largest part as [x, y] points along the pixels' edges, shifted by
    (``left``, ``top``); empty for an empty mask."""
    if not mask.any():
        return []
    padded = np.pad(mask, 1).astype(np.float32)
    outline = measure.approximate_polygon(max(measure.find_contours(padded, 0.5), key=len), tolerance=tolerance)
    return [[round(float(c - 1 + left), 1), round(float(r - 1 + top), 1)] for r, c in outline]
