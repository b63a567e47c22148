"""One typical upload per model and kind of request, the same for every server the benchmarks compare.

Each is the multipart files of one ``/predict`` call: a 320×240 smear crop with one leukocyte, a 1440×1024
metaphase spread, a 512×512 4-channel HPA field, a 96-px H&E patch and a 1200×900 H&E region, a 1000×1000
mitosis field. The spread, field, region and mitosis field are real images from the shared data.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class Upload:
    name: str             # what the benchmark tables call it
    model: str
    files: dict[str, bytes]
    pixels: int           # of the upload, for the tables


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mosaic(files: list[Path], size: tuple[int, int]) -> Image.Image:
    """``size`` tiled with the images in ``files`` (cycled), each at its own size."""
    canvas = Image.new("RGB", size)
    tiles = [Image.open(f).convert("RGB") for f in files]
    x = y = k = 0
    while y < size[1]:
        tile = tiles[k % len(tiles)]
        canvas.paste(tile, (x, y))
        x, k = x + tile.width, k + 1
        if x >= size[0]:
            x, y = 0, y + tile.height
    return canvas


def smear_crop() -> Upload:
    image = Image.new("RGB", (320, 240), (225, 190, 200))
    ImageDraw.Draw(image).ellipse([130, 90, 190, 150], fill=(110, 60, 170))
    return Upload("leukocyte", "leukocyte", {"image": png(image)}, 320 * 240)


def he_patch() -> Upload:
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal((200, 130, 180), 25, (96, 96, 3)), 0, 255).astype(np.uint8)
    return Upload("metastasis", "metastasis", {"image": png(Image.fromarray(pixels))}, 96 * 96)


def typical_uploads(data: Path | None) -> list[Upload]:
    """Every typical upload; without the shared data, only the two made here."""
    uploads = [smear_crop(), he_patch()]
    if data is None or not data.is_dir():
        return uploads
    spread = data / "chromosome" / "metaphases" / "images" / "3.png"
    uploads.append(Upload("chromosome", "chromosome", {"image": spread.read_bytes()}, 1440 * 1024))
    field_id = sorted((data / "protein" / "hpa2018" / "images").glob("*_green.png"))[0].name[:-len("_green.png")]
    uploads.append(Upload("protein", "protein", {
        channel: (data / "protein" / "hpa2018" / "images" / f"{field_id}_{channel}.png").read_bytes()
        for channel in ("red", "green", "blue", "yellow")}, 512 * 512))
    patches = sorted((data / "metastasis" / "pcam" / "valid").glob("*/*.jpg"))[::50][:120]
    uploads.append(Upload("metastasis region", "metastasis", {"image": png(mosaic(patches, (1200, 900)))},
                          1200 * 900))
    crops = sorted((data / "mitosis" / "patches").glob("*/*.jpg"))[::10][:64]
    uploads.append(Upload("mitosis", "mitosis", {"image": png(mosaic(crops, (1000, 1000)))}, 1000 * 1000))
    return uploads
