"""An object's mask as the answer gives it: a COCO run-length encoding and an outline polygon."""
from __future__ import annotations

from typing import Any

import numpy as np
from skimage import measure


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding (pycocotools), JSON-ready."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def polygon(mask: np.ndarray, left: int = 0, top: int = 0, tolerance: float = 0.5) -> list[list[float]]:
    """The outline of the mask's largest part as [x, y] points along the pixels' edges, shifted by
    (``left``, ``top``); empty for an empty mask."""
    if not mask.any():
        return []
    padded = np.pad(mask, 1).astype(np.float32)
    outline = measure.approximate_polygon(max(measure.find_contours(padded, 0.5), key=len), tolerance=tolerance)
    return [[round(float(c - 1 + left), 1), round(float(r - 1 + top), 1)] for r, c in outline]
