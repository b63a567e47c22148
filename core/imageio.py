"""Safe decoding of uploaded images: size is checked from the header before any pixel is decoded."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import ClientError, ImageTooLarge, UnsupportedImage

SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")


def decode_image(data: bytes, max_pixels: int, field: str = "image") -> Image.Image:
    """Decode an upload into a PIL image, refusing empty, unknown, truncated or oversized files."""
    if not data:
        raise ClientError(f"the '{field}' upload is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns at its limit and raises at twice it; ours is exact.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"the '{field}' image is {width}x{height} = {width * height:,} pixels; "
                                    f"the limit is {max_pixels:,}")
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the '{field}' image is too large: {exc}") from None
    except UnidentifiedImageError:
        raise UnsupportedImage(f"the '{field}' upload is not an image in a supported format "
                               f"({', '.join(SUPPORTED_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedImage(f"the '{field}' image could not be decoded (truncated or corrupt): {exc}") from None
    return image


def to_rgb8(image: Image.Image) -> np.ndarray:
    """An HxWx3 uint8 array from any mode Pillow decodes (grey, 16-bit, palette, RGBA, CMYK)."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        top = array.max()
        array = (array / top * 255.0) if top > 0 else array
        grey = np.clip(array, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        # Composite on white so transparent areas look like empty slide, not black.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:  # modes Pillow cannot turn into RGB (e.g. LAB, multi-band TIFF)
        raise UnsupportedImage(f"images of mode {image.mode} are not supported: {exc}") from None


def encode_png(array_or_image: np.ndarray | Image.Image) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
