"""Pictures people can read: units drawn (no missing-glyph boxes), keys with their quantity, nothing cut."""
from __future__ import annotations

import numpy as np
from PIL import Image

from core import fonts
from core.wsi.outputs import heatmap_overlay


def glyph(font, character: str) -> bytes:
    mask = font.getmask(character)
    return bytes(mask) + bytes(str(mask.size), "ascii")


def test_units_are_drawn_with_real_glyphs():
    font = fonts.font(24)
    missing = glyph(font, "\U000F0000")  # a private-use code point: no font draws it
    text = fonts.printable("12 per mm² at 0.25 µm/px")
    assert all(glyph(font, character) != missing for character in text if not character.isspace())


def test_a_heatmap_key_names_its_quantity_and_fits_a_small_image():
    patch = Image.new("RGB", (96, 96), (230, 200, 220))
    drawn = heatmap_overlay(patch, np.array([[0.7]], np.float32), (96, 96), "tumour probability (max 0.70)",
                            "tumour probability")
    pixels = np.asarray(drawn)
    assert drawn.width > 96 and drawn.height > 96  # widened for its two header rows rather than cut
    header = pixels[: drawn.height - 96]
    assert (header < 128).any() and (pixels[drawn.height - 96:, :96] == pixels[-1, 0]).all()
    # the key's colour bar runs from the low colour (blue) to the high one (red) in the second header row
    row = header[header.shape[0] * 3 // 4]
    blue, red = np.flatnonzero((row[:, 2] > 120) & (row[:, 0] < 80)), np.flatnonzero((row[:, 0] > 200) & (row[:, 2] < 60))
    assert len(blue) and len(red) and blue.min() < red.max()
