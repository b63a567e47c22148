"""Safe decoding of uploaded images: size is checked from the header before any pixel is decoded."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ClientError, ImageTooLarge, UnsupportedImage

SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")
EXIF_ORIENTATION = 0x0112


def decode_image(data: bytes, max_pixels: int, field: str = "image") -> Image.Image:
    """Decode an upload into a PIL image, refusing empty, unknown, truncated or oversized files, and turned
    upright by its EXIF orientation (``info["exif_orientation"]`` says which one was applied)."""
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
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if orientation != 1:  # a phone photo taken upright is stored on its side: analyse it as seen
                image = ImageOps.exif_transpose(image)
                image.info["exif_orientation"] = orientation
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


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def grey_to_unit(image: Image.Image) -> np.ndarray:
    """One channel as float 0..1 from 8-bit, 16-bit or float greyscale (colour is averaged)."""
    if image.mode in {"I;16", "I;16B", "I;16L"}:
        return np.asarray(image, np.float32) / 65535.0
    if image.mode in {"I", "F"}:
        array = np.asarray(image, np.float32)
        top = float(array.max())
        return array / top if top > 1.0 else np.clip(array, 0, 1)
    return np.asarray(image.convert("L"), np.float32) / 255.0


def tiff_channels(data: bytes, max_pixels: int) -> np.ndarray | None:
    """A 4-page or 4-channel TIFF as H×W×4 in 0..1; None if the TIFF does not hold four channels."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        pages = tif.pages
        if len(pages) >= 4 and all(len(p.shape) == 2 for p in list(pages)[:4]):
            for page in list(pages)[:4]:  # every channel's size, from its header, before any is decoded
                height, width = page.shape
                if height * width > max_pixels:
                    raise ImageTooLarge(f"the 'image' TIFF is {width}x{height} px per channel; the limit is "
                                        f"{max_pixels:,}")
            stack = np.stack([pages[k].asarray() for k in range(4)], axis=-1)
        else:
            shape = pages[0].shape
            if len(shape) != 3 or 4 not in (shape[0], shape[-1]) or shape[0] * shape[1] * shape[2] // 4 > max_pixels:
                return None
            stack = pages[0].asarray()
            stack = stack if stack.shape[-1] == 4 else np.moveaxis(stack, 0, -1)
    stack = stack.astype(np.float32)
    top = {np.dtype("uint8"): 255.0, np.dtype("uint16"): 65535.0}.get(np.dtype(stack.dtype), float(stack.max()) or 1.0)
    return np.clip(stack / top, 0, 1)


def _bilinear_weights(source: int, target: int) -> np.ndarray:
    """target × source matrix of bilinear interpolation with half-pixel centres, edges clamped."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weights = np.zeros((target, source), np.float32)
    np.add.at(weights, (np.arange(target), low), 1 - (position - low))
    np.add.at(weights, (np.arange(target), high), position - low)
    return weights


def resize_bilinear(batch: np.ndarray, height: int, width: int) -> np.ndarray:
    """A batch of images (N, H, W, C) resized by bilinear interpolation without antialiasing (as
    ``tf.image.resize(..., "bilinear")``; meant for enlarging), in float32, without TensorFlow."""
    count, rows_in, cols_in, channels = batch.shape
    # two large matrix products (columns, then rows) over the whole batch
    by_row = np.ascontiguousarray(batch.astype(np.float32).transpose(1, 0, 3, 2)).reshape(-1, cols_in)
    by_row = by_row @ _bilinear_weights(cols_in, width).T                    # (H·N·C) × w
    out = _bilinear_weights(rows_in, height) @ by_row.reshape(rows_in, -1)  # h × (N·C·w)
    return np.ascontiguousarray(out.reshape(height, count, channels, width).transpose(1, 0, 3, 2))
