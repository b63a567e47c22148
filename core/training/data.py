"""Training data: decoded once into a cache, split by group, streamed with augmentation."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from core.training.recipe import TrainingRecipe


@dataclass
class Arrays:
    x: np.ndarray        # uint8, N x H x W x C: the network's inputs
    y: np.ndarray        # int, N
    groups: np.ndarray   # str, N: original cell / slide / image

    def subset(self, index: np.ndarray) -> "Arrays":
        return Arrays(self.x[index], self.y[index], self.groups[index])


def _data_fingerprint(recipe: TrainingRecipe, data_dir: Path) -> str:
    """Changes when the input spec or any file under data_dir (name, size, time) changes."""
    files = sorted((str(p.relative_to(data_dir)), p.stat().st_size, int(p.stat().st_mtime))
                   for p in data_dir.rglob("*") if p.is_file())
    spec = recipe.model.spec
    source = json.dumps([spec.id, spec.meta.get("input"), str(data_dir.resolve()), files])
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def load_arrays(recipe: TrainingRecipe, data_dir: Path, cache_dir: Path) -> Arrays:
    """Every example of ``recipe.examples`` as arrays, cached until the data or input spec change."""
    model_id = recipe.model.spec.id
    cache = cache_dir / f"{model_id}-{_data_fingerprint(recipe, data_dir)}.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            print(f"[data] {len(saved['y'])} examples from cache {cache}", flush=True)
            return Arrays(saved["x"], saved["y"], saved["groups"])
    started, inputs, labels, groups = time.perf_counter(), [], [], []
    for x, label, group in recipe.examples(data_dir):
        inputs.append(x)
        labels.append(label)
        groups.append(group)
        if len(inputs) % 250 == 0:
            print(f"[data] prepared {len(inputs)} examples ({time.perf_counter() - started:.0f} s)", flush=True)
    if not inputs:
        raise SystemExit(f"no training examples for '{model_id}' under {data_dir}")
    print(f"[data] prepared {len(inputs)} examples ({time.perf_counter() - started:.0f} s)", flush=True)
    arrays = Arrays(np.stack(inputs), np.array(labels), np.array(groups))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=arrays.x, y=arrays.y, groups=arrays.groups)
    return arrays


def grouped_split(y: np.ndarray, groups: np.ndarray, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out) where held_out is fold ``fold`` of ``folds``, stratified, never splitting a group."""
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for index, (rest, held_out) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        if index == fold:
            return rest, held_out
    raise ValueError(f"fold {fold} does not exist among {folds}")


def three_way_split(arrays: Arrays, folds: int, fold: int, val_fraction: float, seed: int,
                    fixed_test: np.ndarray | None = None, training_only: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    """train / val (early stopping) / test (reported only): disjoint in groups. The test split is one of
    ``folds`` grouped folds, or ``fixed_test`` (a boolean mask) when the data set fixes it. Examples marked
    ``training_only`` are added to train after the split, so they never decide early stopping or a figure."""
    extra = np.zeros(len(arrays.y), bool) if training_only is None else np.asarray(training_only, bool)
    kept = np.flatnonzero(~extra)  # the examples split, as indices into arrays
    y, groups = arrays.y[kept], arrays.groups[kept]
    if fixed_test is not None:
        rest, test = np.flatnonzero(~fixed_test[kept]), np.flatnonzero(fixed_test[kept])
    else:
        rest, test = grouped_split(y, groups, folds, fold, seed)
    rest_y, rest_groups = y[rest], groups[rest]
    fewest_groups = min(len(set(rest_groups[rest_y == label])) for label in set(rest_y))
    n_val_folds = max(2, min(round(1 / val_fraction), fewest_groups))
    train, val = grouped_split(rest_y, rest_groups, n_val_folds, 0, seed + 1)
    split = {"train": np.concatenate([kept[rest[train]], np.flatnonzero(extra)]), "val": kept[rest[val]],
             "test": kept[test]}
    if set(arrays.groups[split["train"]]) & set(arrays.groups[split["test"]]):
        raise RuntimeError("a group is in both the training and the test split")
    return split


def augmenter(seed: int, fill: str = "constant", colour: bool = True):
    """Orthogonal and free rotations, flips, zoom and (``colour``) colour jitter: stain and scanner vary between
    labs. ``fill`` is how rotated corners are filled: "constant" (black) or "reflect"."""
    import keras

    geometry = [
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(0.5, fill_mode=fill, seed=seed),
        keras.layers.RandomZoom(0.25, seed=seed),
    ]
    if not colour:
        return keras.Sequential(geometry, name="augment")
    return keras.Sequential([
        *geometry,
        keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed),
        keras.layers.RandomContrast(0.1, seed=seed),
        # Keras 3: saturation factor 0.5 is "no change" (0 = grey); hue factor 0 is "no change".
        keras.layers.RandomSaturation((0.4, 0.6), value_range=(0, 255), seed=seed),
        keras.layers.RandomHue(0.02, value_range=(0, 255), seed=seed),
    ], name="augment")


def hed_jitter(batch, sigma: float, seed: int):
    """Stain augmentation (after Tellez et al. 2018): each image's haematoxylin, eosin and DAB densities (the
    colour deconvolution of skimage.color) scaled by U(1-sigma, 1+sigma) and shifted by U(-sigma/10, sigma/10),
    as stains and scanners differ between labs (tissue densities lie mostly below 0.2 on skimage's scale, so a
    shift of sigma itself turns a slide cyan or yellow). ``batch``: float pixels 0-255, N×H×W×3."""
    import tensorflow as tf
    from skimage.color import hed_from_rgb, rgb_from_hed

    log_adjust = float(np.log(1e-6))  # skimage's: optical densities scaled so that 1e-6 transmission is 1
    to_hed, to_rgb = tf.constant(hed_from_rgb, tf.float32), tf.constant(rgb_from_hed, tf.float32)
    # not clipped at 0 (as skimage does): with sigma 0 the round trip then gives the image back
    stains = tf.einsum("nhwc,cd->nhwd", tf.math.log(tf.maximum(batch / 255.0, 1e-6)) / log_adjust, to_hed)
    shape = tf.stack([tf.shape(batch)[0], 1, 1, 3])
    scale = tf.random.uniform(shape, 1.0 - sigma, 1.0 + sigma, seed=seed)
    shift = tf.random.uniform(shape, -sigma / 10, sigma / 10, seed=seed + 1)
    rgb = tf.exp(tf.einsum("nhwc,cd->nhwd", (stains * scale + shift) * log_adjust, to_rgb))
    return tf.clip_by_value(rgb * 255.0, 0.0, 255.0)


def shuffled_batches(tensors: tuple[np.ndarray, ...], batch_size: int, shuffle: bool, seed: int):
    """Batches of ``tensors`` (sliced along the first axis), pixels cast to float.

    Indices are shuffled, not images: tf.data keeps a shuffle buffer alive per epoch's iterator, so a buffer
    of images grows memory by the data set's size every epoch (an OOM kill at 192-px inputs); one of
    indices costs 8 bytes per example.
    """
    import tensorflow as tf

    constants = [tf.constant(t) for t in tensors]
    data = tf.data.Dataset.range(len(tensors[0]))
    if shuffle:
        data = data.shuffle(len(tensors[0]), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).map(
        lambda index: (tf.cast(tf.gather(constants[0], index), tf.float32),
                       *(tf.gather(c, index) for c in constants[1:])))


def dataset(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, batch_size: int, augment: bool, seed: int,
            fill: str = "constant", stain_sigma: float = 0.0, colour_jitter: bool = True):
    """Batches of (pixels, targets[, per-example weights]); shuffled and augmented for training (colour jitter
    unless ``colour_jitter`` is False; HED stain jitter of ``stain_sigma`` when it is above 0)."""
    import tensorflow as tf

    data = shuffled_batches((x, y) if weights is None else (x, y, weights), batch_size, augment, seed)
    if augment:
        layers = augmenter(seed, fill, colour_jitter)
        data = data.map(lambda xb, *rest: (tf.clip_by_value(layers(xb, training=True), 0.0, 255.0), *rest),
                        num_parallel_calls=tf.data.AUTOTUNE)
    if augment and stain_sigma > 0:
        data = data.map(lambda xb, *rest: (hed_jitter(xb, stain_sigma, seed), *rest),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)
