"""What people look at and import: a heatmap over the slide, tumour regions as polygons, GeoJSON."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw
from skimage import measure

from core import fonts
from core.wsi.engine import THUMBNAIL_PX, Plan
from core.wsi.slide import describe

# Probability colour scale, blue (0) through green and yellow to red (1).
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[49, 54, 149], [69, 160, 200], [120, 198, 121], [253, 174, 97], [215, 25, 28]], float)


def colourise(probabilities: np.ndarray) -> np.ndarray:
    """RGB colours for probabilities in 0..1 (NaN is treated as 0; mask it separately)."""
    p = np.nan_to_num(np.clip(probabilities, 0, 1))
    return np.stack([np.interp(p, _STOPS, _COLOURS[:, k]) for k in range(3)], axis=-1).astype(np.uint8)


def heatmap_overlay(background: Image.Image, grid: np.ndarray, grid_extent: tuple[float, float],
                    title: str, quantity: str, high: str = "1",
                    decorate: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """``grid`` (NaN = not scored; values 0..1) over ``background``; ``grid_extent`` is the grid's (width,
    height) in the background's pixels (it may reach past its edge). Above it: the title, and the colour key
    of ``quantity`` from 0 to ``high`` (what a value of 1 stands for). ``decorate`` draws on the blended
    picture (in the background's pixels) before the key is added."""
    base = background.convert("RGB")
    cells = Image.fromarray(colourise(grid))
    scored = Image.fromarray((np.isfinite(grid) * 255 * 0.55).astype(np.uint8))
    size = (max(1, round(grid_extent[0])), max(1, round(grid_extent[1])))
    cells = cells.resize(size, Image.Resampling.NEAREST).crop((0, 0) + base.size)
    alpha = scored.resize(size, Image.Resampling.NEAREST).crop((0, 0) + base.size)
    blended = Image.composite(cells, base, alpha)
    if decorate is not None:
        decorate(blended)
    return _with_key(blended, title, quantity, high)


def _with_key(image: Image.Image, title: str, quantity: str, high: str) -> Image.Image:
    """Two rows above ``image``: the title, then "quantity: 0 [colour bar] high"; the picture widens (white)
    where the rows need more room than a small image gives, so nothing overlaps or is cut."""
    font = fonts.font(max(12, round(image.width / 55)))
    title, key = fonts.printable(title), fonts.printable(f"{quantity}:")
    high = fonts.printable(high)
    measure_text = ImageDraw.Draw(image).textlength
    margin, row = font.size // 2, round(font.size * 1.6)
    bar_w = max(60, min(image.width // 3, 240))
    needed = max(measure_text(title, font=font),
                 measure_text(key, font=font) + measure_text(f"0  {high}", font=font) + bar_w + 3 * margin)
    out = Image.new("RGB", (max(image.width, round(needed) + 2 * margin), image.height + 2 * row),
                    (255, 255, 255))
    out.paste(image, (0, 2 * row))
    draw = ImageDraw.Draw(out)
    draw.text((margin, row // 2), title, fill=(0, 0, 0), font=font, anchor="lm")
    y = row + row // 2
    draw.text((margin, y), key, fill=(0, 0, 0), font=font, anchor="lm")
    x = margin + measure_text(key, font=font) + margin
    draw.text((x, y), "0", fill=(0, 0, 0), font=font, anchor="lm")
    x += measure_text("0 ", font=font)
    ramp = colourise(np.linspace(0, 1, bar_w))[None].repeat(font.size, axis=0)
    out.paste(Image.fromarray(ramp), (round(x), y - font.size // 2))
    draw.text((x + bar_w + margin // 2, y), high, fill=(0, 0, 0), font=font, anchor="lm")
    return out


def regions(grid: np.ndarray, threshold: float, cell_px: float, mpp: float | None) -> list[dict[str, Any]]:
    """Connected cells at or above ``threshold`` as polygons in level-0 pixel coordinates (cell edges),
    largest first, with area and probabilities."""
    above = np.isfinite(grid) & (np.nan_to_num(grid, nan=0.0) >= threshold)
    labelled = measure.label(above, connectivity=2)
    found = []
    for region in measure.regionprops(labelled):
        component = np.pad(labelled == region.label, 1).astype(np.float32)
        outline = max(measure.find_contours(component, 0.5), key=len)
        outline = measure.approximate_polygon(outline, tolerance=0.25)
        # Padded (row, col) → cell-edge coordinates: the 0.5 contour runs half-way between cell centres.
        points = [[round(float((c - 0.5) * cell_px), 1), round(float((r - 0.5) * cell_px), 1)] for r, c in outline]
        values = grid[labelled == region.label]
        area_px = float(region.area) * cell_px * cell_px
        found.append({
            "polygon": points,
            "area_px": round(area_px),
            "area_mm2": round(area_px * mpp * mpp / 1e6, 4) if mpp else None,
            "max_probability": round(float(values.max()), 4),
            "mean_probability": round(float(values.mean()), 4),
        })
    return sorted(found, key=lambda r: -r["area_px"])


def slide_heatmap(slide, plan: Plan, grid: np.ndarray, title: str, quantity: str, high: str = "1",
                  points: list[tuple[float, float, tuple[int, int, int]]] = (),
                  box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """``grid`` (one value per cell of ``plan``, NaN = not scored) over the slide's thumbnail, with its key
    (see :func:`heatmap_overlay`); ``points`` (x, y, colour) are marked and ``box`` (left, top, right, bottom)
    outlined, both in level-0 pixels."""
    thumbnail = slide.get_thumbnail((THUMBNAIL_PX, THUMBNAIL_PX)).convert("RGB")
    shrink = thumbnail.width / slide.dimensions[0]
    extent = (plan.cols * plan.cell_level0 * shrink, plan.rows * plan.cell_level0 * shrink)

    def mark(picture: Image.Image) -> None:
        draw, radius = ImageDraw.Draw(picture), max(3, round(max(picture.size) / 250))
        for x, y, colour in points:
            cx, cy = x * shrink, y * shrink
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=(0, 0, 0), fill=colour)
        if box is not None:
            draw.rectangle([v * shrink for v in box], outline=(0, 0, 0), width=max(2, radius // 2))

    return heatmap_overlay(thumbnail, grid, extent, title, quantity, high, mark if points or box else None)


def slide_facts(slide, plan: Plan) -> dict[str, Any]:
    """What every slide result starts with: the slide's size, levels and resolution, and the level read."""
    return {"slide": describe(slide, plan.slide_mpp), "level_read": plan.level}


def points_geojson(points: list[dict[str, Any]], class_of: Callable[[dict[str, Any]], str],
                   colour_of: Callable[[dict[str, Any]], tuple[int, int, int]], measurements: tuple[str, ...],
                   prefix: str) -> dict[str, Any]:
    """Points (``x``, ``y`` in pixels) as a FeatureCollection QuPath imports as classified detections."""
    features = [{
        "type": "Feature", "id": f"{prefix}-{index}",
        "geometry": {"type": "Point", "coordinates": [point["x"], point["y"]]},
        "properties": {"objectType": "detection",
                       "classification": {"name": class_of(point), "color": list(colour_of(point))},
                       **{key: point[key] for key in measurements}},
    } for index, point in enumerate(points, 1)]
    return {"type": "FeatureCollection", "features": features}


def polygons_geojson(found: list[dict[str, Any]], class_name: str, colour: tuple[int, int, int]) -> dict[str, Any]:
    """A FeatureCollection QuPath imports as classified annotations (pixel units, origin top left)."""
    features = []
    for index, region in enumerate(found, 1):
        ring = region["polygon"] + region["polygon"][:1]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "annotation",
                "name": f"{class_name} region {index}",
                "classification": {"name": class_name, "color": list(colour)},
                "measurements": {k: region[k] for k in ("max_probability", "mean_probability", "area_mm2")
                                 if region[k] is not None},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def grid_json(grid: np.ndarray) -> list[list[float | None]]:
    """Rows of probabilities, ``null`` where nothing was scored (JSON has no NaN)."""
    return [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in grid]
