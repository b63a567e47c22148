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


def spread(size=(640, 480), rods=(), nucleus=(480, 330, 70), seed: int = 0, width: int = 7) -> Image.Image:
    """A metaphase-like field: grey background, dark rods (x, y, length, angle°) ``width`` px wide and a paler
    textured nucleus."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (150, 148, 160))
    draw = ImageDraw.Draw(image)
    if nucleus:
        x, y, r = nucleus
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(112, 100, 135))
        for _ in range(60):
            dx, dy = rng.integers(-r // 2, r // 2, size=2)
            draw.ellipse([x + dx - 2, y + dy - 2, x + dx + 2, y + dy + 2], fill=(95, 85, 120))
    for x, y, length, angle in rods:
        dx, dy = np.cos(np.radians(angle)) * length / 2, np.sin(np.radians(angle)) * length / 2
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=(55, 40, 80), width=width)
    return image


RODS = ((80, 80, 34, 20), (200, 90, 40, 100), (320, 70, 30, 45), (90, 220, 38, 160), (220, 230, 32, 70),
        (330, 200, 36, 0), (120, 380, 30, 120), (260, 380, 40, 30))


def section(size=(2048, 1536), seed: int = 0, dark_square: tuple[int, int, int] | None = None) -> np.ndarray:
    """An H&E-like section: glass, an elliptic pink tissue blob with purple speckle, and optionally a dark
    purple square (x, y, side) standing in for a dense region a scorer can find."""
    rng = np.random.default_rng(seed)
    width, height = size
    rgb = np.full((height, width, 3), 242, np.uint8)
    yy, xx = np.mgrid[:height, :width]
    blob = ((yy - height / 2) ** 2 / (0.35 * height) ** 2 + (xx - width / 2) ** 2 / (0.4 * width) ** 2) < 1
    rgb[blob] = (214, 140, 190)
    speckle = blob & (rng.random((height, width)) < 0.05)
    rgb[speckle] = (120, 60, 150)
    if dark_square:
        x, y, side = dark_square
        rgb[y:y + side, x:x + side] = (60, 20, 90)
    return rgb


def pyramid_tiff(path, rgb: np.ndarray, mpp: float, levels: int = 3) -> None:
    """A tiled, multi-level TIFF that OpenSlide opens as a generic-tiff slide with ``openslide.mpp-x``."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        level = rgb
        for index in range(levels):
            px_per_cm = 1e4 / (mpp * 2 ** index)
            tif.write(level, tile=(256, 256), photometric="rgb", compression="zlib",
                      resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER",
                      subfiletype=1 if index else 0)  # reduced-resolution pages are the pyramid's levels
            level = np.asarray(Image.fromarray(level).reduce(2))


def hpa_field(size=(256, 256), cells=((80, 90), (180, 160)), radius=40, dtype=np.uint8) -> dict[str, Image.Image]:
    """A 4-channel HPA-like field as four greyscale images: per cell a bright nucleus (blue), a cell body
    (red microtubules, yellow ER) and protein (green) in the nucleus only."""
    height, width = size[1], size[0]
    yy, xx = np.mgrid[:height, :width]
    planes = {name: np.zeros((height, width), np.float32) for name in ("red", "green", "blue", "yellow")}
    for cx, cy in cells:
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        planes["blue"] += (r2 < (radius // 2) ** 2) * 0.8
        planes["green"] += (r2 < (radius // 2) ** 2) * 0.6
        planes["red"] += (r2 < radius ** 2) * 0.4
        planes["yellow"] += (r2 < radius ** 2) * 0.3
    top = 65535 if dtype == np.uint16 else 255
    mode = "I;16" if dtype == np.uint16 else "L"
    return {name: Image.fromarray((np.clip(p, 0, 1) * top).astype(dtype), mode=mode) for name, p in planes.items()}
