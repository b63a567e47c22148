"""Binary dilation, erosion and closing by a disk, row by row.

They give exactly what ``scipy.ndimage.binary_*`` gives with ``skimage.morphology.disk(radius)`` (border value
0: outside the image is background), but fast: scipy visits the image once per pixel of the disk, and on a
320×240 smear a closing by disk(3) and a dilation by disk(6) took most of a leukocyte request's CPU time. Here
the disk is taken as its rows: row ``dy`` of disk(r) is a segment of half-width ``floor(sqrt(r² - dy²))``;
a running maximum (or minimum) along each image row over that segment (van Herk's linear-time filter in
``scipy.ndimage``), shifted by ``dy`` and combined over the 2r + 1 rows, is the dilation (or erosion).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


def _rows(radius: int) -> list[tuple[int, int]]:
    """(dy, half-width) of each row of skimage's disk(radius): the pixels with dx² + dy² ≤ radius²."""
    return [(dy, math.isqrt(radius * radius - dy * dy)) for dy in range(-radius, radius + 1)]


def _by_rows(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    image = np.asarray(mask, np.uint8)
    if radius <= 0 or image.size == 0:
        return image.astype(bool)
    running = ndi.maximum_filter1d if dilate else ndi.minimum_filter1d
    along_rows = {half: running(image, 2 * half + 1, axis=1, mode="constant", cval=0).view(bool)
                  for half in {half for _, half in _rows(radius)}}
    height = image.shape[0]
    out = np.zeros(image.shape, bool) if dilate else np.ones(image.shape, bool)
    for dy, half in _rows(radius):
        # out[y] combines row y + dy of the filtered image; rows whose y + dy lies outside the image meet
        # background (a dilation gains nothing there, an erosion loses the row)
        low, high = max(0, -dy), max(0, min(height, height - dy))
        if dilate:
            if low < high:
                out[low:high] |= along_rows[half][low + dy:high + dy]
        else:
            out[:low] = False
            out[max(low, high):] = False
            if low < high:
                out[low:high] &= along_rows[half][low + dy:high + dy]
    return out


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` of a pixel of ``mask``."""
    return _by_rows(mask, radius, dilate=True)


def erode_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels of ``mask`` whose whole disk of ``radius`` lies in ``mask`` and in the image."""
    return _by_rows(mask, radius, dilate=False)


def close_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation then erosion by the same disk: fills gaps narrower than the disk."""
    return erode_disk(dilate_disk(mask, radius), radius)
