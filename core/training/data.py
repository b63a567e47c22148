"""Training data: decoded once into a cache, split by group, streamed with augmentation."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

from core.model_base import Example, MicroscopyModel


@dataclass
class Arrays:
    x: np.ndarray        # uint8, N x H x W x C: the network's inputs
    y: np.ndarray        # int, N
    groups: np.ndarray   # str, N: original cell / slide / image

    def subset(self, index: np.ndarray) -> "Arrays":
        return Arrays(self.x[index], self.y[index], self.groups[index])


def load_arrays(model: MicroscopyModel, examples: list[Example], cache_dir: Path) -> Arrays:
    """Every example through ``model.training_input``, cached under a key of the files and input spec."""
    key_source = json.dumps([model.spec.input, [(str(e.path), e.label, e.group) for e in examples]])
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    cache = cache_dir / f"{model.spec.id}-{key}.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            print(f"[data] {len(examples)} examples from cache {cache}", flush=True)
            return Arrays(saved["x"], saved["y"], saved["groups"])
    started, inputs = time.perf_counter(), []
    for done, example in enumerate(examples, 1):
        with Image.open(example.path) as image:
            inputs.append(model.training_input(image))
        if done % max(1, len(examples) // 10) == 0 or done == len(examples):
            print(f"[data] prepared {done}/{len(examples)} ({time.perf_counter() - started:.0f} s)", flush=True)
    arrays = Arrays(np.stack(inputs), np.array([e.label for e in examples]), np.array([e.group for e in examples]))
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


def three_way_split(arrays: Arrays, folds: int, fold: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """train / val (early stopping) / test (reported only): disjoint in groups."""
    rest, test = grouped_split(arrays.y, arrays.groups, folds, fold, seed)
    rest_y, rest_groups = arrays.y[rest], arrays.groups[rest]
    fewest_groups = min(len(set(rest_groups[rest_y == label])) for label in set(rest_y))
    n_val_folds = max(2, min(round(1 / val_fraction), fewest_groups))
    train, val = grouped_split(rest_y, rest_groups, n_val_folds, 0, seed + 1)
    split = {"train": rest[train], "val": rest[val], "test": test}
    assert not (set(arrays.groups[split["train"]]) & set(arrays.groups[split["test"]]))
    return split


def augmenter(seed: int):
    """Orthogonal and free rotations, flips, zoom and colour jitter: stain and scanner vary between labs."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(0.5, fill_mode="constant", seed=seed),
        keras.layers.RandomZoom(0.25, seed=seed),
        keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed),
        keras.layers.RandomContrast(0.15, seed=seed),
        keras.layers.RandomSaturation(0.15, value_range=(0, 255), seed=seed),
        keras.layers.RandomHue(0.04, value_range=(0, 255), seed=seed),
    ], name="augment")


def dataset(arrays: Arrays, batch_size: int, augment: bool, seed: int):
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((arrays.x, arrays.y))
    if augment:
        data = data.shuffle(len(arrays.y), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment:
        layers = augmenter(seed)
        data = data.map(lambda x, y: (tf.clip_by_value(layers(x, training=True), 0.0, 255.0), y),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)
