"""Per-cell measures of where the protein (green) lies relative to the reference channels.

A compartment is defined by where its protein sits: inside the nucleus or not, at the cell edge, on the
microtubules (red) or the ER (yellow), in spots, in the nucleoli (dark in blue, bright in green). Each cell
of a segmented field becomes one row of :data:`FEATURE_NAMES`, all of them free of the image's absolute
brightness (ratios, correlations, shares), so that fields imaged with other exposures give the same
numbers. They need little data to learn from, unlike pixels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, measure, morphology

from core import deadline
from core.morphology import dilate_disk, erode_disk

RADIAL_BINS = 4     # cytoplasm from the nucleus's edge (0) to the cell's edge (1)
EDGE_PX = 3         # width of the cell-edge and nuclear-rim bands at the 512-px field scale
SPOT_RADIUS_PX = 3  # spots (vesicles, speckles, nucleoli) are up to about this radius
GLCM_LEVELS = 16

FEATURE_NAMES: tuple[str, ...] = (
    "green_over_background", "green_cv", "green_skew",
    "nuclear_share", "nuclear_enrichment", "nuclear_rim_enrichment", "cell_edge_enrichment",
    *(f"radial_{k}" for k in range(RADIAL_BINS)), "nucleus_inner_over_outer",
    "pearson_blue", "pearson_red", "pearson_yellow",
    "manders_green_in_red", "manders_green_in_yellow", "manders_red_in_green", "manders_yellow_in_green",
    "spot_share", "spots_per_100px2", "spot_mean_px", "nuclear_spot_share",
    "nucleolus_enrichment",
    "glcm_contrast", "glcm_homogeneity", "glcm_correlation", "glcm_energy",
    "nucleus_area_share", "log_cell_area",
)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _above(values: np.ndarray) -> np.ndarray:
    """Pixels above the cell's own mean: a channel's 'on' pixels for Manders' coefficients (robust on
    cells where Otsu splits noise)."""
    return values > values.mean()


def _glcm(green: np.ndarray, inside: np.ndarray) -> list[float]:
    """Grey-level co-occurrence measures of the green texture inside the cell (level 0 = outside, dropped)."""
    top = np.percentile(green[inside], 99) if inside.any() else 0
    if top <= 0:
        return [0.0, 1.0, 0.0, 1.0]
    levels = np.where(inside, 1 + np.minimum(green / top * (GLCM_LEVELS - 1), GLCM_LEVELS - 1), 0).astype(np.uint8)
    matrix = feature.graycomatrix(levels, [1, 3], [0, np.pi / 2], levels=GLCM_LEVELS + 1)[1:, 1:].astype(float)
    totals = matrix.sum(axis=(0, 1), keepdims=True)
    if (totals == 0).any():
        return [0.0, 1.0, 0.0, 1.0]
    matrix = matrix / totals
    return [float(feature.graycoprops(matrix, name).mean()) for name in ("contrast", "homogeneity", "correlation",
                                                                          "energy")]


def cell_features(channels: np.ndarray, cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Cells × :data:`FEATURE_NAMES` for each labelled cell of ``cells`` (in regionprops order), ``channels``
    H×W×4 (red, green, blue, yellow) in 0..1, ``nuclei`` the cells' nuclei with the same labels."""
    green_all = channels[..., 1]
    background = float(np.median(green_all[cells == 0])) if (cells == 0).any() else float(green_all.min())
    rows = []
    for region in measure.regionprops(cells):
        deadline.check()  # a noisy field can hold thousands of "cells": stop within the request's budget
        top, left, bottom, right = region.bbox
        top, left = max(top - 1, 0), max(left - 1, 0)
        bottom, right = min(bottom + 1, cells.shape[0]), min(right + 1, cells.shape[1])
        window = (slice(top, bottom), slice(left, right))
        inside = cells[window] == region.label
        nucleus = (nuclei[window] == region.label) & inside
        if not nucleus.any():  # a cell always grows from its nucleus; guard against odd masks
            nucleus = inside & (ndi.distance_transform_edt(inside) >= ndi.distance_transform_edt(inside).max() / 2)
        red, green, blue, yellow = (channels[window][..., k] for k in range(4))
        signal = np.clip(green - background, 0, None)
        g = signal[inside]
        total = g.sum() + 1e-9
        mean = g.mean() + 1e-9

        def enrichment(where: np.ndarray) -> float:
            return float(signal[where].mean() / mean) if where.any() else 1.0

        cytoplasm = inside & ~nucleus
        rim = nucleus ^ erode_disk(nucleus, EDGE_PX)
        rim |= dilate_disk(nucleus, EDGE_PX) & cytoplasm
        edge = inside & ~erode_disk(inside, EDGE_PX)
        to_nucleus = ndi.distance_transform_edt(~nucleus)
        to_edge = ndi.distance_transform_edt(inside)
        position = to_nucleus / (to_nucleus + to_edge + 1e-9)
        radial = [enrichment(cytoplasm & (position >= k / RADIAL_BINS) & (position < (k + 1) / RADIAL_BINS))
                  for k in range(RADIAL_BINS)]
        depth = ndi.distance_transform_edt(nucleus)
        inner = nucleus & (depth > np.median(depth[nucleus]))
        outer = nucleus & ~inner

        spots = morphology.white_tophat(signal * inside, morphology.disk(SPOT_RADIUS_PX))
        spot_mask = inside & (spots > spots[inside].mean() + 2 * spots[inside].std())
        spot_labels = measure.label(spot_mask)
        n_spots = int(spot_labels.max())
        dark_blue = nucleus & (blue < 0.7 * np.median(blue[nucleus]))

        green_values, blue_values = green[inside], blue[inside]
        red_values, yellow_values = red[inside], yellow[inside]
        green_on, red_on, yellow_on = _above(green_values), _above(red_values), _above(yellow_values)
        centred = g - g.mean()
        rows.append([
            float(np.log((g.mean() + 1e-3) / (background + 1e-3) + 1)),
            float(g.std() / mean),
            float((centred ** 3).mean() / (g.std() ** 3 + 1e-12)),
            float(signal[nucleus].sum() / total),
            enrichment(nucleus),
            enrichment(rim),
            enrichment(edge),
            *radial,
            float((signal[inner].mean() + 1e-9) / (signal[outer].mean() + 1e-9)) if inner.any() and outer.any()
            else 1.0,
            _pearson(green_values, blue_values), _pearson(green_values, red_values),
            _pearson(green_values, yellow_values),
            float(g[red_on].sum() / total), float(g[yellow_on].sum() / total),
            float(red_values[green_on].sum() / (red_values.sum() + 1e-9)),
            float(yellow_values[green_on].sum() / (yellow_values.sum() + 1e-9)),
            float(spots[inside].sum() / total),
            100.0 * n_spots / inside.sum(),
            float(spot_mask.sum() / n_spots) if n_spots else 0.0,
            float(spots[nucleus].sum() / (spots[inside].sum() + 1e-9)),
            enrichment(dark_blue),
            *_glcm(signal, inside),
            float(nucleus.sum() / inside.sum()),
            float(np.log(inside.sum())),
        ])
    # a measure without meaning on a degenerate cell (no spread to correlate) counts as neutral
    return np.nan_to_num(np.array(rows, np.float32).reshape(len(rows), len(FEATURE_NAMES)))
