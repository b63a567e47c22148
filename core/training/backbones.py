"""Pretrained backbones and the classifier built on them, from standard Keras layers only.

Every classifier takes float pixels in 0..255 and does its own input scaling, so serving code feeds
raw pixels whatever the backbone. ``weights`` is ``imagenet`` (download, needs internet), a local
weights file (``.h5`` files are matched by layer name, e.g. the shared MobileNet), or ``none``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Backbone:
    factory: Callable[..., keras.Model]
    #: the last layer of the first block: ``--mode ft`` keeps it and all before it frozen
    first_block_end: str
    #: "tf" scales to [-1, 1]; "caffe" is BGR minus the ImageNet mean; "none" if the model scales itself
    scaling: str


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v1_0.25": Backbone(lambda **kw: keras.applications.MobileNet(alpha=0.25, **kw),
                                  "conv_pw_1_relu", "tf"),
    "mobilenet_v1_0.5": Backbone(lambda **kw: keras.applications.MobileNet(alpha=0.5, **kw),
                                 "conv_pw_1_relu", "tf"),
    "mobilenet_v2": Backbone(keras.applications.MobileNetV2, "expanded_conv_project_BN", "tf"),
    "efficientnet_b0": Backbone(keras.applications.EfficientNetB0, "block1a_project_bn", "none"),
    "vgg16": Backbone(keras.applications.VGG16, "block1_pool", "caffe"),
    "resnet50": Backbone(keras.applications.ResNet50, "pool1_pool", "caffe"),
}


def _scaling_layers(kind: str) -> list[keras.layers.Layer]:
    if kind == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit")]
    if kind == "caffe":
        # RGB→BGR and mean subtraction as a fixed 1x1 convolution: a standard, portable layer.
        layer = keras.layers.Conv2D(3, 1, name="rgb_to_bgr_centred", trainable=False)
        layer.build((None, None, None, 3))
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        for out in range(3):
            kernel[0, 0, 2 - out, out] = 1.0
        layer.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, np.float32)])
        return [layer]
    return []


def build_backbone(name: str, weights: str, input_shape: tuple[int, int, int]) -> keras.Model:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)}")
    factory = BACKBONES[name].factory
    if weights == "imagenet":
        return factory(include_top=False, weights="imagenet", input_shape=input_shape, pooling="avg")
    model = factory(include_top=False, weights=None, input_shape=input_shape, pooling="avg")
    if weights != "none":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
        # Full Keras-2 .h5 files (with their ImageNet top) load layer by layer, matched by name.
        model.load_weights(str(path), by_name=True) if path.suffix == ".h5" else model.load_weights(str(path))
    return model


def build_classifier(backbone_name: str, weights: str, input_shape: tuple[int, int, int], n_classes: int,
                     mode: str, dropout: float = 0.3) -> keras.Model:
    """Backbone + new head; in ``tl`` the backbone is frozen, in ``ft`` all but its first block train."""
    backbone = build_backbone(backbone_name, weights, input_shape)
    spec = BACKBONES[backbone_name]
    if mode == "tl":
        backbone.trainable = False
    elif mode == "ft":
        backbone.trainable = True
        for layer in backbone.layers:
            layer.trainable = False
            if layer.name == spec.first_block_end:
                break
        else:
            raise ValueError(f"backbone '{backbone_name}' has no layer '{spec.first_block_end}'")
    else:
        raise ValueError(f"mode must be 'tl' or 'ft', not '{mode}'")
    inputs = keras.Input(input_shape, name="pixels")
    x = inputs
    for layer in _scaling_layers(spec.scaling):
        x = layer(x)
    # training=False keeps batch-norm statistics fixed while fine-tuning (small batches, small data).
    x = backbone(x, training=False)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=f"{backbone_name}_{mode}")
