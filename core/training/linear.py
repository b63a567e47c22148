"""Logistic regression on measures, and the same model as one Keras layer for serving.

Multi-label (protein): one regression per class, each an independent probability (sigmoid). Single-label
(leukocyte): one multinomial regression, probabilities that sum to 1 (softmax). Fitted with scikit-learn
(standardised measures, L2 penalty, no class re-weighting, so that its probabilities stay calibrated to how
often the label holds); served as one ``Dense`` layer with
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
    activation: str = "sigmoid"  # "sigmoid": independent classes; "softmax": exactly one class

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Rows × classes: independent probabilities (sigmoid) or one distribution per row (softmax)."""
        logits = ((x - self.mean) / self.scale) @ self.weights + self.bias
        if self.activation == "softmax":
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            return exp / exp.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-logits))

    def to_keras(self):
        import keras

        # ((x - mean) / scale) @ W + b  ==  x @ (W / scale) + (b - (mean / scale) @ W)
        weights = self.weights / self.scale[:, None]
        bias = self.bias - (self.mean / self.scale) @ self.weights
        inputs = keras.Input((len(self.mean),), name="measures")
        head = keras.layers.Dense(len(self.bias), activation=self.activation, name="head")
        outputs = head(inputs)
        head.set_weights([weights.astype(np.float32), bias.astype(np.float32)])
        return keras.Model(inputs, outputs, name="measure_classifier")


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale per measure (scale 1 where a measure is constant)."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def fit_multinomial(x: np.ndarray, y: np.ndarray, classes: int, strength: float = 1.0) -> LinearClassifier:
    """One multinomial logistic regression over ``classes`` classes (``y``: class per row, each class present);
    ``strength`` is scikit-learn's C (smaller: more regularised)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = standardiser(x)
    fitted = LogisticRegression(C=strength, max_iter=5000).fit((x - mean) / scale, y)
    if list(fitted.classes_) != list(range(classes)):
        raise ValueError(f"every one of the {classes} classes needs examples; got {list(fitted.classes_)}")
    return LinearClassifier(mean.astype(np.float32), scale.astype(np.float32), fitted.coef_.T.astype(np.float32),
                            fitted.intercept_.astype(np.float32), "softmax")


def fit_one_vs_rest(x: np.ndarray, y: np.ndarray, classes: list[int], strength: float = 0.1) -> LinearClassifier:
    """One logistic regression per class in ``classes`` (``y``: rows × all classes); the other classes are never
    predicted. A class with one answer only in ``y`` gets that answer's rate, bounded to 0.01..0.99, for
    every row. ``strength`` is scikit-learn's C (smaller: more regularised)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = standardiser(x)
    standardised = (x - mean) / scale
    weights = np.zeros((x.shape[1], y.shape[1]))
    bias = np.full(y.shape[1], NEVER_BIAS)
    for k in classes:
        if len(np.unique(y[:, k])) < 2:
            rate = float(np.clip(y[:, k].mean(), 0.01, 0.99))
            bias[k] = np.log(rate / (1 - rate))
            continue
        fitted = LogisticRegression(C=strength, max_iter=3000).fit(standardised, y[:, k])
        weights[:, k], bias[k] = fitted.coef_[0], fitted.intercept_[0]
    return LinearClassifier(mean.astype(np.float32), scale.astype(np.float32),
                            weights.astype(np.float32), bias.astype(np.float32))
