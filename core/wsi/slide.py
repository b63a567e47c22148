"""Slides from files (every format OpenSlide reads) and from uploaded images, with their µm per pixel."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from core.errors import ClientError, ImageTooLarge, UnsupportedImage


def open_slide(path: Path):
    """An OpenSlide object for a whole-slide file (SVS, tiled TIFF, NDPI, MRXS, ...), or a Pillow-readable
    image wrapped with the same interface; a clear error for anything else."""
    import openslide

    if not Path(path).is_file():
        raise ClientError(f"slide {Path(path).name} does not exist")
    try:
        return openslide.open_slide(str(path))
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{Path(path).name} is a single image too large to read whole; send a tiled, "
                            f"pyramidal slide (SVS, tiled TIFF)") from None
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise UnsupportedImage(f"{Path(path).name} is not a slide OpenSlide or Pillow can read: {exc}") from None


def image_slide(image: Image.Image):
    """An uploaded region as a one-level slide, so regions and whole slides share one code path."""
    import openslide

    return openslide.ImageSlide(image.convert("RGB"))


def slide_mpp(slide, override: float | None) -> float | None:
    """µm per level-0 pixel: the override if given, else the slide's ``openslide.mpp-x`` (None if absent)."""
    if override:
        return float(override)
    value = slide.properties.get("openslide.mpp-x")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def required_mpp(slide, override: float | None) -> float:
    """:func:`slide_mpp`, or a client error when neither the slide nor the request gives it."""
    mpp = slide_mpp(slide, override)
    if mpp is None:
        raise ClientError("the slide does not record its resolution (openslide.mpp-x); give the option mpp")
    return mpp


def describe(slide, mpp: float | None) -> dict:
    """Facts about a slide for the result: size, levels, resolution, vendor."""
    width, height = slide.dimensions
    return {
        "width": width, "height": height, "levels": slide.level_count,
        "level_downsamples": [round(float(d), 3) for d in slide.level_downsamples],
        "mpp": round(mpp, 4) if mpp else None,
        "vendor": slide.properties.get("openslide.vendor"),
    }
