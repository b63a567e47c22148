"""A centre-heatmap detector of chromosome instances (CenterNet-style) and its target encoding and decoding.

The network sees a spread at half its native scale and answers, every ``STRIDE`` pixels of that input, the
probability that a chromosome's box centre lies in that cell, the box's size and the centre's offset within
the cell. Decoding keeps the local maxima of the heatmap: one peak is one chromosome, so sister chromatids
that have come apart and touching neighbours are counted by what the network learned, not by how the
threshold cut them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: output cells per input pixel along each axis
STRIDE = 4
#: channels of the network's output: heatmap, width, height (in cells), x and y offset within the cell
CHANNELS = 5


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in input pixels
    score: float


def build_detector(backbone_weights: str = "none", side: int | None = None, name: str = "chromosome_detector"):
    """MobileNet v1 (α 0.25) encoder to stride 16 with a two-step upsampling decoder to stride 4; inputs of
    any size (a multiple of 16) or, with ``side``, ``side``² only (as served: ONNX wants static shapes).
    ``backbone_weights``: a Keras-2 ``.h5`` file of ImageNet weights, matched by layer name, or ``none``."""
    import keras

    encoder = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None, input_shape=(side, side, 3))
    if backbone_weights != "none":
        encoder.load_weights(backbone_weights, by_name=True, skip_mismatch=True)
    stride4, stride8, stride16 = (encoder.get_layer(name).output
                                  for name in ("conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu"))
    features = keras.Model(encoder.input, [stride4, stride8, stride16], name="encoder")

    pixels = keras.Input((side, side, 3), name="pixels")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit")(pixels)
    s4, s8, s16 = features(scaled)
    x = s16
    for skip, width, step in ((s8, 64, "up8"), (s4, 32, "up4")):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{step}_resize")(x)
        x = keras.layers.Concatenate(name=f"{step}_join")([x, skip])
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{step}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{step}_bn")(x)
        x = keras.layers.ReLU(name=f"{step}_relu")(x)
    heads = []
    for channels, activation, bias, head in ((1, "sigmoid", -2.19, "heatmap"), (2, None, 0.0, "size"),
                                             (2, "sigmoid", 0.0, "offset")):
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=f"{head}_conv")(x)
        heads.append(keras.layers.Conv2D(channels, 1, activation=activation, name=head,
                                         bias_initializer=keras.initializers.Constant(bias))(h))
    outputs = keras.layers.Concatenate(name="detections")(heads)
    return keras.Model(pixels, outputs, name=name)


def ensemble(members: list, side: int):
    """One network for ``side``² inputs whose output is the mean of the ``members``' outputs (detectors of one
    architecture trained from different random starts): their mistakes differ, so the mean heatmap has
    fewer spurious and missing peaks than any one of them."""
    import keras

    copies = []
    for index, trained in enumerate(members):
        copy = build_detector("none", side, name=f"member_{index}")
        copy.set_weights(trained.get_weights())
        copies.append(copy)
    if len(copies) == 1:
        return copies[0]
    pixels = keras.Input((side, side, 3), name="pixels")
    mean = keras.layers.Average(name="mean_of_members")([copy(pixels) for copy in copies])
    return keras.Model(pixels, mean, name="chromosome_detector_ensemble")


def encode_targets(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Training targets for an input of ``height``×``width`` px holding ``boxes`` (x0, y0, x1, y1, input px).

    Channels: Gaussian heatmap (1 at each centre cell), width and height in cells, x and y offset of the
    centre within its cell, and a mask that is 1 at centre cells (where size and offset are learned).
    """
    rows, cols = height // STRIDE, width // STRIDE
    target = np.zeros((rows, cols, CHANNELS + 1), np.float32)
    yy, xx = np.mgrid[0:rows, 0:cols]
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        col, row = int(cx), int(cy)
        if not (0 <= col < cols and 0 <= row < rows):
            continue
        w, h = (x1 - x0) / STRIDE, (y1 - y0) / STRIDE
        sigma = max(0.7, np.sqrt(w * h) / 6)
        bump = np.exp(-((xx - col) ** 2 + (yy - row) ** 2) / (2 * sigma ** 2))
        target[..., 0] = np.maximum(target[..., 0], bump)
        target[row, col, 0] = 1.0
        target[row, col, 1:5] = (w, h, cx - col, cy - row)
        target[row, col, 5] = 1.0
    return target


def detection_loss(target, output):
    """Focal loss on the heatmap (CenterNet's, α 2, β 4) plus L1 on size (×0.1) and offset at centre cells."""
    import keras.ops as ops

    heat, truth, mask = output[..., 0], target[..., 0], target[..., 5]
    heat = ops.clip(heat, 1e-4, 1 - 1e-4)
    peak = ops.cast(ops.equal(truth, 1.0), "float32")
    positive = -ops.log(heat) * ops.square(1 - heat) * peak
    negative = -ops.log(1 - heat) * ops.square(heat) * ops.power(1 - truth, 4) * (1 - peak)
    centres = ops.maximum(ops.sum(peak), 1.0)
    regression = ops.abs(output[..., 1:5] - target[..., 1:5]) * ops.expand_dims(mask, -1)
    size = ops.sum(regression[..., :2]) / centres
    offset = ops.sum(regression[..., 2:]) / centres
    return (ops.sum(positive) + ops.sum(negative)) / centres + 0.1 * size + offset


#: the stain level is this percentile of a spread's grey values: chromosomes cover a few per cent of a spread
STAIN_PERCENTILE = 0.5
#: the most a spread's contrast is scaled by to reach the training levels (an empty field is not blown up)
MAX_GAIN = 2.0


def grey_levels(rgb: np.ndarray) -> dict[str, float]:
    """A spread's background (median grey) and stain (the darkest STAIN_PERCENTILE %) levels."""
    grey = rgb.astype(np.float32).mean(axis=2)
    return {"background": float(np.median(grey)), "stain": float(np.percentile(grey, STAIN_PERCENTILE))}


def to_levels(rgb: np.ndarray, levels: dict[str, float]) -> np.ndarray:
    """``rgb`` mapped linearly so that its background and stain levels become ``levels``: spreads imaged
    brighter or paler than the training spreads (e.g. grey G-banded ones on a white background) reach the
    detector as the training spreads did."""
    own = grey_levels(rgb)
    gain = (levels["background"] - levels["stain"]) / max(own["background"] - own["stain"], 1.0)
    gain = float(np.clip(gain, 1 / MAX_GAIN, MAX_GAIN))
    mapped = (rgb.astype(np.float32) - own["background"]) * gain + levels["background"]
    return np.clip(mapped, 0, 255).astype(np.uint8)


def tiles(height: int, width: int, tile: int, margin: int) -> list[tuple[int, int]]:
    """Top-left corners of ``tile``² windows whose cores (the window less ``margin`` on each side, or up to
    the image's edge) cover an image of ``height``×``width``; the margin gives the core's edge context."""
    core = tile - 2 * margin
    return [(top, left) for top in range(-margin, max(1, height - margin), core)
            for left in range(-margin, max(1, width - margin), core)]


def core_cells(corner: tuple[int, int], tile: int, margin: int) -> tuple[slice, slice]:
    """The output cells a window at ``corner`` (its top-left, from :func:`tiles`) contributes: its core's."""
    cells = (tile - 2 * margin) // STRIDE
    row, col = (corner[0] + margin) // STRIDE, (corner[1] + margin) // STRIDE
    return slice(row, row + cells), slice(col, col + cells)


def stitched_output(forward, image: np.ndarray, tile: int, margin: int, per_call: int = 8,
                    corners: list[tuple[int, int]] | None = None) -> np.ndarray:
    """The network's output over a whole image (float pixels), computed on overlapping ``tile``² windows of
    which each contributes its core: any image size, and memory bounded by ``per_call`` windows at a time.
    ``corners``: only these windows of :func:`tiles` (the other cores stay zero); all by default.

    Beyond its edges the image is continued with its background (the median colour): a chromosome cut by
    the border then ends there, as its labelled box does. Replicating the edge pixels instead drew it out
    into a long streak, and chromosomes on the border went uncounted."""
    from core import deadline

    height, width = image.shape[:2]
    background = np.median(image.reshape(-1, image.shape[2]), axis=0)
    padded = np.empty((height + margin + tile, width + margin + tile, image.shape[2]), np.float32)
    padded[:] = background
    padded[margin:margin + height, margin:margin + width] = image
    corners = tiles(height, width, tile, margin) if corners is None else corners
    cells, inner = (tile - 2 * margin) // STRIDE, margin // STRIDE
    rows, cols = -(-height // STRIDE), -(-width // STRIDE)
    whole = np.zeros((rows + cells, cols + cells, CHANNELS), np.float32)
    for start in range(0, len(corners), per_call):
        deadline.check()
        chunk = corners[start:start + per_call]
        windows = np.stack([padded[top + margin:top + margin + tile, left + margin:left + margin + tile]
                            for top, left in chunk]).astype(np.float32)
        for corner, output in zip(chunk, forward(windows)):
            whole[core_cells(corner, tile, margin)] = output[inner:inner + cells, inner:inner + cells]
    return whole[:rows, :cols]


def other_views_heat(forward, views: int = 8):
    """``forward`` on square windows answering, in the heatmap's channel, the sum of the heatmaps of the
    views other than the plain one, each turned back (the other channels are zero): the 7 other dihedral
    views (``views`` 8) or the 3 quarter turns (4)."""
    def summed(windows: np.ndarray) -> np.ndarray:
        heat = None
        for flip in (False, True)[:views // 4]:
            for turns in range(4):
                if not flip and turns == 0:
                    continue
                view = windows[:, :, ::-1] if flip else windows
                answer = forward(np.ascontiguousarray(np.rot90(view, turns, axes=(1, 2))))[..., 0]
                answer = np.rot90(answer, -turns, axes=(1, 2))
                answer = answer[:, :, ::-1] if flip else answer
                heat = answer.copy() if heat is None else heat + answer
        out = np.zeros(heat.shape + (CHANNELS,), np.float32)
        out[..., 0] = heat
        return out
    return summed


def views_at(scale: float, base: float, enlarged: int) -> int:
    """The views a reading at ``scale`` averages: all 8 at the detector's ``base`` scale, ``enlarged`` when
    read larger (about twice the windows)."""
    return 8 if scale == base else enlarged


def dihedral_output(forward, image: np.ndarray, tile: int, margin: int, plain: np.ndarray,
                    quiet_below: float = 0.0, views: int = 8) -> np.ndarray:
    """``plain`` (the stitched output of ``forward`` over ``image``) with its heatmap averaged over the 8
    dihedral views of each window, or (``views`` 4) its 4 quarter turns; the size and offset channels stay
    the plain view's (they turn with the view). A window whose core's plain heat stays below
    ``quiet_below`` holds no chromosome's centre: its other views are not read and its core keeps the plain
    heat (a spread's empty margins cost nothing)."""
    if views not in (4, 8):
        raise ValueError(f"views: 4 or 8, not {views}")
    height, width = image.shape[:2]
    busy = [corner for corner in tiles(height, width, tile, margin)
            if plain[core_cells(corner, tile, margin) + (0,)].max(initial=0.0) >= quiet_below]
    others = stitched_output(other_views_heat(forward, views), image, tile, margin, corners=busy)[..., 0]
    read = np.zeros(plain.shape[:2], bool)
    for corner in busy:
        read[core_cells(corner, tile, margin)] = True
    out = plain.copy()
    out[..., 0] = np.where(read, (plain[..., 0] + others) / views, plain[..., 0])
    return out


def box_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return float(width * height / union)


def decode(output: np.ndarray, threshold: float, max_overlap: float = 1.0, max_objects: int = 500) -> list[Detection]:
    """Peaks of the heatmap (its 3×3 maxima) at or above ``threshold`` as boxes in input pixels, strongest
    first; a peak whose box overlaps a stronger one's by more than ``max_overlap`` (intersection over union)
    is dropped: two peaks on one long chromosome, or on its two chromatids, both answer its whole box."""
    from scipy.ndimage import maximum_filter

    heat = output[..., 0]
    peaks = (heat == maximum_filter(heat, size=3, mode="constant")) & (heat >= threshold)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-heat[rows, cols])[:max_objects]
    found = []
    for row, col in zip(rows[order], cols[order]):
        w, h, dx, dy = output[row, col, 1:5]
        cx, cy = (col + dx) * STRIDE, (row + dy) * STRIDE
        w, h = max(float(w), 0.5) * STRIDE, max(float(h), 0.5) * STRIDE
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if max_overlap < 1.0 and any(box_overlap(box, kept.box) > max_overlap for kept in found):
            continue
        found.append(Detection(box, float(heat[row, col])))
    return found


def median_size(boxes: list[tuple[float, float, float, float]]) -> float:
    """The median chromosome size (square root of the box area) of boxes (x0, y0, x1, y1); 0 without boxes."""
    if not boxes:
        return 0.0
    sides = np.asarray(boxes, np.float64)
    return float(np.median(np.sqrt((sides[:, 2] - sides[:, 0]) * (sides[:, 3] - sides[:, 1]))))


def reading_scale(found_size: float, base: float, reference: float, largest: float) -> float:
    """The scale to read a spread at: ``base``, raised so that chromosomes of ``found_size`` (a first
    reading's median, in the spread's pixels) look as large as the training spreads' median ``reference``,
    never beyond ``largest``. Spreads of small, condensed chromosomes are enlarged; larger ones are read at
    ``base``, as before (shrinking them was not measured)."""
    if found_size <= 0:
        return base
    return float(np.clip(base * reference / found_size, base, max(base, largest)))
