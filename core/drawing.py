"""Predictions drawn over the uploaded image, so a person can check them at a glance."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from core import fonts

# Colour-blind-safe palette (Okabe & Ito), one colour per label index.
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
           (0, 114, 178), (213, 94, 0), (204, 121, 167), (0, 0, 0)]


def colour_for(label_index: int) -> tuple[int, int, int]:
    return PALETTE[label_index % len(PALETTE)]


def draw_boxes(rgb: np.ndarray, predictions: Sequence[dict[str, Any]], label_names: Sequence[str],
               captions: bool = True) -> Image.Image:
    """Each prediction's ``bbox`` outlined in its label's colour, with label and probability above it
    (``captions=False`` for crowded images: boxes only, see :func:`draw_banner`)."""
    image = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    font = fonts.font(max(12, round(max(image.size) / 45)))
    for prediction in predictions:
        x, y, w, h = prediction["bbox"]
        colour = colour_for(label_names.index(prediction["label"]))
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=width)
        if not captions:
            continue
        text = f"{prediction['label']} {prediction['probability']:.2f}"
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        ty = y - (bottom - top) - 2 if y - (bottom - top) - 2 >= 0 else y + h + 1
        draw.rectangle([x, ty, x + (right - left) + 4, ty + (bottom - top) + 2], fill=colour)
        draw.text((x + 2, ty - (top - y)), text, fill=(0, 0, 0) if sum(colour) > 350 else (255, 255, 255), font=font)
    return image


def draw_banner(image: Image.Image, text: str, label_names: Sequence[str],
                colours: Sequence[tuple[int, int, int]] | None = None) -> Image.Image:
    """A strip above the image with a summary and a colour key of the labels (``colours``, by default
    the palette's, one per label)."""
    font = fonts.font(max(14, round(image.width / 50)))
    text = fonts.printable(text)
    height = round(font.size * 1.8)
    out = Image.new("RGB", (image.width, image.height + height), (255, 255, 255))
    out.paste(image, (0, height))
    draw = ImageDraw.Draw(out)
    x = font.size // 2
    draw.text((x, height // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    x = image.width - font.size // 2
    for index in reversed(range(len(label_names))):
        x -= draw.textlength(label_names[index], font=font)
        draw.text((x, height // 2), label_names[index], fill=(0, 0, 0), font=font, anchor="lm")
        x -= font.size + 6
        draw.rectangle([x, height // 2 - font.size // 2, x + font.size, height // 2 + font.size // 2],
                       fill=colours[index] if colours else colour_for(index))
        x -= font.size
    return out


def distinct_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` colours, bright enough to read on a dark fluorescence image; hues step by the golden ratio
    from yellow, so that any two colours, near in the list or not, differ."""
    import colorsys

    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb((0.15 + 0.618034 * k) % 1.0, 0.75, 1.0))
            for k in range(count)]


def inside(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float]:
    """The shift (dx, dy) that moves ``box`` (left, top, right, bottom) inside a width × height image."""
    left, top, right, bottom = box
    dx = -left if left < 0 else min(0.0, width - right)
    dy = -top if top < 0 else min(0.0, height - bottom)
    return dx, dy


def wrapped(draw: ImageDraw.ImageDraw, text: str, font, width: float, separator: str = ", ") -> list[str]:
    """``text`` split at ``separator`` into lines no wider than ``width`` (a part wider than that keeps its
    own line)."""
    lines: list[str] = []
    for part in text.split(separator):
        candidate = f"{lines[-1]}{separator}{part}" if lines else part
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(part)
    return lines
