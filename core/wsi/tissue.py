"""Tissue versus glass on a slide thumbnail: Otsu on colour saturation, cleaned up morphologically."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters, morphology

# Glass and background are near grey (saturation below ~0.05); stained tissue lies well above ~0.15.
# Otsu's threshold is clipped into this band so that a field that is all tissue (or all glass), where
# Otsu would split one mode in half, still comes out right.
SATURATION_BAND = (0.05, 0.15)


def tissue_mask(rgb: np.ndarray, min_object_fraction: float = 0.0005) -> np.ndarray:
    """Boolean mask of tissue in an RGB thumbnail; specks under ``min_object_fraction`` of it are dropped."""
    saturation = color.rgb2hsv(rgb)[..., 1]
    brightness = rgb.astype(np.float32).mean(axis=2)
    threshold = float(np.clip(filters.threshold_otsu(saturation), *SATURATION_BAND)) \
        if saturation.max() > saturation.min() else SATURATION_BAND[1]
    # Very dark pixels (black scanner borders, pen) are saturated noise, not tissue.
    mask = (saturation > threshold) & (brightness > 30)
    # Closing on a padded copy (edge-replicated): tissue touching the border must not be eroded away.
    mask = ndi.binary_closing(np.pad(mask, 3, mode="edge"), morphology.disk(2))[3:-3, 3:-3]
    mask = ndi.binary_fill_holes(mask)
    return morphology.remove_small_objects(mask, max_size=max(0, round(min_object_fraction * mask.size) - 1))


def cell_fractions(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The share of tissue in each cell of a rows×cols grid laid over the mask (area average)."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((cols, rows), Image.Resampling.BOX), dtype=np.float32) / 255.0
