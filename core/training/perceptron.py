"""A one-hidden-layer perceptron on measures, and the same network as Keras layers for serving.

Fitted with scikit-learn (standardised measures, ReLU units, L2 penalty ``alpha``, softmax output, log-loss,
no class re-weighting, so that its probabilities follow how often each class occurs); served as two ``Dense``
layers with the standardisation folded into the first, so that it loads, is sha256-checked and runs (ONNX
Runtime) exactly as every network of the registry — no pickle. Where the classes are not separated by a plane
in the measures (a monocyte's nucleus is kidney-shaped *and* its cytoplasm grey-blue), the hidden units give
the classifier what a linear one lacks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.training.linear import standardiser


@dataclass(frozen=True)
class PerceptronClassifier:
    mean: np.ndarray            # per measure
    scale: np.ndarray           # per measure (standard deviation, 1 where constant)
    hidden_weights: np.ndarray  # measures × hidden units
    hidden_bias: np.ndarray     # per hidden unit
    output_weights: np.ndarray  # hidden units × classes
    output_bias: np.ndarray     # per class

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Rows × classes, one distribution per row."""
        hidden = np.maximum(((x - self.mean) / self.scale) @ self.hidden_weights + self.hidden_bias, 0)
        logits = hidden @ self.output_weights + self.output_bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def to_keras(self):
        import keras

        # ((x - mean) / scale) @ W + b  ==  x @ (W / scale) + (b - (mean / scale) @ W)
        weights = self.hidden_weights / self.scale[:, None]
        bias = self.hidden_bias - (self.mean / self.scale) @ self.hidden_weights
        inputs = keras.Input((len(self.mean),), name="measures")
        hidden = keras.layers.Dense(len(self.hidden_bias), activation="relu", name="hidden")
        head = keras.layers.Dense(len(self.output_bias), activation="softmax", name="head")
        outputs = head(hidden(inputs))
        hidden.set_weights([weights.astype(np.float32), bias.astype(np.float32)])
        head.set_weights([self.output_weights.astype(np.float32), self.output_bias.astype(np.float32)])
        return keras.Model(inputs, outputs, name="measure_classifier")


def fit_perceptron(x: np.ndarray, y: np.ndarray, classes: int, hidden_units: int = 64, alpha: float = 1.0,
                   seed: int = 0) -> PerceptronClassifier:
    """A perceptron over ``classes`` classes (``y``: class per row, each class present; at least 3 classes, so
    that the output is a softmax); ``alpha`` is scikit-learn's L2 penalty (larger: more regularised)."""
    from sklearn.neural_network import MLPClassifier

    if classes < 3:
        raise ValueError(f"a perceptron of {classes} classes would have a logistic output, not a softmax")
    mean, scale = standardiser(x)
    fitted = MLPClassifier((hidden_units,), alpha=alpha, max_iter=3000, random_state=seed).fit((x - mean) / scale, y)
    if list(fitted.classes_) != list(range(classes)):
        raise ValueError(f"every one of the {classes} classes needs examples; got {list(fitted.classes_)}")
    return PerceptronClassifier(mean.astype(np.float32), scale.astype(np.float32),
                                fitted.coefs_[0].astype(np.float32), fitted.intercepts_[0].astype(np.float32),
                                fitted.coefs_[1].astype(np.float32), fitted.intercepts_[1].astype(np.float32))
