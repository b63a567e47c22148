"""What a haematologist looks at in a leukocyte, measured on the window the network sees.

The nucleus (purple: blue well above green, as in detection) of the cell at the window's centre: its size,
roundness, lobes (a neutrophil has 3-5, an eosinophil 2, a monocyte one kidney-shaped nucleus, a lymphocyte one
round nucleus filling the cell), thickness, colour and texture; and the cytoplasm in a ring around it: its
colour (eosinophil granules orange-red, monocyte cytoplasm grey-blue, lymphocyte a thin blue rim), granules
(fine contrast) and the ring's extent. A classifier on these measures makes different mistakes from the
network, so the model combines both (core.models.leukocyte), and the detection of leukocytes reads the same
stain floor.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters, measure

from core.morphology import dilate_disk

# Blue minus green of a nucleus pixel is typically 60-150; of red cells and background below 30.
STAIN_FLOOR = 40

#: the ring around the nucleus read as cytoplasm: from just outside the nucleus to this far from it (px)
RING_INNER_PX, RING_OUTER_PX = 2, 14
#: a lobe is a part of the nucleus still apart after eroding it by 2 (or 4) px and this share of its area
LOBE_SHARE, FINE_LOBE_SHARE = 0.08, 0.04
#: how far the texture filters read beyond a pixel (the Laplacian of Gaussian at sigma 1.5: 6 px), plus a margin
FILTER_REACH_PX = 8

_COLOUR = ["mean_r", "mean_g", "mean_b", "mean_l", "mean_a", "mean_b_star", "sd_l", "sd_a", "sd_b_star",
           "mean_saturation", "grey_p10", "grey_p90", "grey_sd"]
MEASURE_NAMES: tuple[str, ...] = (
    "nucleus_area", "nucleus_roundness", "nucleus_solidity", "nucleus_eccentricity", "nucleus_major_axis",
    "nucleus_minor_axis", "lobes", "fine_lobes", "nucleus_holes", "nucleus_thickness", "nucleus_thinness",
    *(f"nucleus_{name}" for name in _COLOUR), *(f"cytoplasm_{name}" for name in _COLOUR),
    "cytoplasm_a_p10", "cytoplasm_a_p50", "cytoplasm_a_p90", "cytoplasm_b_p10", "cytoplasm_b_p50",
    "cytoplasm_b_p90", "cytoplasm_red_hue_share", "cytoplasm_blue_hue_share", "cytoplasm_red_granule_share",
    "cytoplasm_edge_strength", "nucleus_edge_strength", "cytoplasm_fine_texture", "nucleus_fine_texture",
    "nucleus_stain", "cytoplasm_stain", "ring_to_nucleus_area",
)


def _colour_stats(rgb: np.ndarray, lab: np.ndarray, hsv: np.ndarray) -> list[float]:
    grey = rgb.mean(axis=1)
    return [*rgb.mean(axis=0), *lab.mean(axis=0), *lab.std(axis=0), float(hsv[:, 1].mean()),
            float(np.percentile(grey, 10)), float(np.percentile(grey, 90)), float(grey.std())]


def central_nucleus(window: np.ndarray) -> np.ndarray | None:
    """The nucleus mask (all its lobes) of the leukocyte nearest the window's centre; None when there is none."""
    signed = window.astype(np.int16)
    stain = signed[..., 2] - signed[..., 1]
    inside = window.max(axis=2) > 10  # the black corners of rotated crops and of windows past the image edge
    if inside.sum() < 10 or stain[inside].max() <= STAIN_FLOOR:
        return None
    threshold = max(float(filters.threshold_otsu(stain[inside])), STAIN_FLOOR)
    purple = ndi.binary_opening((stain > threshold) & inside)
    nuclei, count = ndi.label(dilate_disk(purple, 6))  # the dilation joins the lobes of one nucleus
    if count == 0:
        return None
    centre = window.shape[0] // 2, window.shape[1] // 2
    chosen = nuclei[centre]
    if chosen == 0:  # the centre is cytoplasm: the nearest nucleus
        _, (rows, cols) = ndi.distance_transform_edt(nuclei == 0, return_indices=True)
        chosen = nuclei[rows[centre], cols[centre]]
    nucleus = purple & (nuclei == chosen)
    return nucleus if nucleus.sum() >= 20 else None


def cell_measures(window: np.ndarray) -> np.ndarray:
    """The measures (``MEASURE_NAMES``, float32) of the leukocyte at the centre of an RGB uint8 window; all
    zero when the window holds no nucleus."""
    nucleus = None if window.ndim != 3 or window.shape[2] != 3 else central_nucleus(np.asarray(window, np.uint8))
    if nucleus is None:
        return np.zeros(len(MEASURE_NAMES), np.float32)
    # Everything below reads the nucleus, the ring and the filters' reach around them: the rest is cut off.
    rows, cols = np.flatnonzero(nucleus.any(axis=1)), np.flatnonzero(nucleus.any(axis=0))
    reach = RING_OUTER_PX + FILTER_REACH_PX
    box = (slice(max(0, rows[0] - reach), rows[-1] + reach + 1), slice(max(0, cols[0] - reach), cols[-1] + reach + 1))
    window, nucleus = window[box], nucleus[box]
    rgb = window.astype(np.float32)
    inside = window.max(axis=2) > 10
    area = float(nucleus.sum())
    outside = ndi.distance_transform_edt(~nucleus)
    ring = (outside > RING_INNER_PX) & (outside <= RING_OUTER_PX) & inside
    if ring.sum() < 10:  # a nucleus that fills the window: whatever else there is
        ring = ~nucleus & inside
        if not ring.any():
            return np.zeros(len(MEASURE_NAMES), np.float32)
    depth = ndi.distance_transform_edt(nucleus)
    lobes = ndi.label(depth > 2)[0]
    fine_lobes = ndi.label(depth > 4)[0]
    props = measure.regionprops(nucleus.astype(np.uint8))[0]
    # colour spaces only where they are read: both masks' pixels as one column of pixels
    both = np.concatenate([window[nucleus], window[ring]])[:, None, :]
    lab, hsv = color.rgb2lab(both)[:, 0], color.rgb2hsv(both)[:, 0]
    n = int(nucleus.sum())
    ring_rgb, ring_lab, ring_hue = rgb[ring], lab[n:], hsv[n:, 0]
    grey = rgb.mean(axis=2)
    edges, fine = filters.sobel(grey), np.abs(ndi.gaussian_laplace(grey, 1.5))
    stain = rgb[..., 2] - rgb[..., 1]
    measures = [
        area, props.perimeter ** 2 / (4 * np.pi * area), props.solidity, props.eccentricity,
        props.axis_major_length, props.axis_minor_length,
        int((np.bincount(lobes.ravel())[1:] >= LOBE_SHARE * area).sum()),
        int((np.bincount(fine_lobes.ravel())[1:] >= FINE_LOBE_SHARE * area).sum()),
        float(ndi.binary_fill_holes(nucleus).sum() - area) / area, float(depth.max()), float(depth.max()) ** 2 / area,
        *_colour_stats(rgb[nucleus], lab[:n], hsv[:n]), *_colour_stats(ring_rgb, ring_lab, hsv[n:]),
        *np.percentile(ring_lab[:, 1], [10, 50, 90]), *np.percentile(ring_lab[:, 2], [10, 50, 90]),
        float(((ring_hue > 0.9) | (ring_hue < 0.08)).mean()), float(((ring_hue > 0.55) & (ring_hue < 0.8)).mean()),
        float((ring_rgb[:, 0] - ring_rgb[:, 2] > 20).mean()),
        float(edges[ring].mean()), float(edges[nucleus].mean()), float(fine[ring].mean()), float(fine[nucleus].mean()),
        float(stain[nucleus].mean()), float(stain[ring].mean()), float(ring.sum()) / area,
    ]
    return np.asarray(measures, np.float32)
