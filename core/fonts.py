"""The font of every picture: DejaVu Sans where the system has it (it draws "²" and "µ"; the container
installs it with Debian's fonts-dejavu-core), else Pillow's built-in font, which lacks those two: text
drawn with it spells them out ("mm2", "um") rather than printing boxes."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf")
SPELT_OUT = {"²": "2", "µ": "u"}


@lru_cache(maxsize=1)
def _dejavu() -> str | None:
    return next((path for path in CANDIDATES if Path(path).is_file()), None)


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont:
    """A font of ``size`` pixels."""
    path = _dejavu()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def printable(text: str) -> str:
    """``text`` as the chosen font can draw it."""
    if _dejavu():
        return text
    for character, spelt in SPELT_OUT.items():
        text = text.replace(character, spelt)
    return text
