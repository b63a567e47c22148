"""A logistic regression per class on measures, and the same model as two Keras layers for serving.

Fitted with scikit-learn (standardised measures, L2 penalty, no class re-weighting, so that its
probabilities stay calibrated to how often the label holds); served as one ``Dense(sigmoid)`` layer with
the standardisation folded into its weights, so that it loads, is sha256-checked and runs (ONNX Runtime)
exactly as every network of the registry — no pickle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the bias of a class that is not fitted: its probability is about 1e-13, it is never emitted
NEVER_BIAS = -30.0


@dataclass(frozen=True)
class LinearClassifier:
    mean: np.ndarray      # per measure
    scale: np.ndarray     # per measure (standard deviation, 1 where constant)
    weights: np.ndarray   # measures × classes
    bias: np.ndarray      # per class

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Rows × classes, each an independent probability."""
        logits = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-logits))

    def to_keras(self):
        import keras

        # ((x - mean) / scale) @ W + b  ==  x @ (W / scale) + (b - (mean / scale) @ W)
        weights = self.weights / self.scale[:, None]
        bias = self.bias - (self.mean / self.scale) @ self.weights
        inputs = keras.Input((len(self.mean),), name="measures")
        head = keras.layers.Dense(len(self.bias), activation="sigmoid", name="head")
        outputs = head(inputs)
        head.set_weights([weights.astype(np.float32), bias.astype(np.float32)])
        return keras.Model(inputs, outputs, name="measure_classifier")


def fit_one_vs_rest(x: np.ndarray, y: np.ndarray, classes: list[int], strength: float = 0.1) -> LinearClassifier:
    """One logistic regression per class in ``classes`` (``y``: rows × all classes); the other classes are never
    predicted. A class with one answer only in ``y`` gets that answer's rate, bounded to 0.01..0.99, for
    every row. ``strength`` is scikit-learn's C (smaller: more regularised)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    standardised = (x - scaler.mean_) / scale
    weights = np.zeros((x.shape[1], y.shape[1]))
    bias = np.full(y.shape[1], NEVER_BIAS)
    for k in classes:
        if len(np.unique(y[:, k])) < 2:
            rate = float(np.clip(y[:, k].mean(), 0.01, 0.99))
            bias[k] = np.log(rate / (1 - rate))
            continue
        fitted = LogisticRegression(C=strength, max_iter=3000).fit(standardised, y[:, k])
        weights[:, k], bias[k] = fitted.coef_[0], fitted.intercept_[0]
    return LinearClassifier(scaler.mean_.astype(np.float32), scale.astype(np.float32),
                            weights.astype(np.float32), bias.astype(np.float32))
