"""Images the tests make themselves."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

PINK = (228, 188, 196)      # red cells
PALE = (236, 226, 232)      # background
PURPLE = (112, 62, 172)     # leukocyte nucleus


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def smear(size=(320, 240), leukocytes=((160, 120, 30),), platelets=((40, 40),), seed: int = 0) -> Image.Image:
    """A blood-smear-like field: pale background, pink red cells, purple nuclei (x, y, radius), tiny platelets."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, PALE)
    draw = ImageDraw.Draw(image)
    for _ in range(size[0] * size[1] // 2500):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        draw.ellipse([x - 18, y - 18, x + 18, y + 18], fill=PINK, outline=(200, 150, 160))
    for x, y, r in leukocytes:
        draw.ellipse([x - r - 12, y - r - 12, x + r + 12, y + r + 12], fill=(210, 190, 220))  # cytoplasm
        draw.ellipse([x - r, y - r, x + r, y + r], fill=PURPLE)
    for x, y in platelets:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=PURPLE)
    return image


def blank(size=(320, 240)) -> Image.Image:
    return Image.new("RGB", size, PALE)
