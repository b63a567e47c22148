"""Evaluation figures shared by the models, the training command and the benchmarks: one implementation each.

Object matching (points within a radius, centres inside boxes), precision / recall / F1 from counts,
balanced accuracy, mean ± sd over folds, intervals (bootstrap over groups), temperature scaling and
calibration error.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def match_points(found: np.ndarray, truth: np.ndarray, radius: float) -> list[tuple[int, int]]:
    """One-to-one pairs (found index, truth index) within ``radius``, maximising the pairs (Hungarian)."""
    if not len(found) or not len(truth):
        return []
    distance = np.hypot(found[:, None, 0] - truth[None, :, 0], found[:, None, 1] - truth[None, :, 1])
    cost = np.where(distance <= radius, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if distance[r, c] <= radius]


def match_centres(centres: Sequence[tuple[float, float]], boxes: Sequence[Box]) -> int:
    """Hits, one-to-one: an (x, y) centre inside a box, each box used once (nearest box centre first)."""
    used, hits = set(), 0
    for x, y in centres:
        inside = [k for k, (x0, y0, x1, y1) in enumerate(boxes) if k not in used and x0 <= x <= x1 and y0 <= y <= y1]
        if inside:
            best = min(inside, key=lambda k: (x - (boxes[k][0] + boxes[k][2]) / 2) ** 2
                       + (y - (boxes[k][1] + boxes[k][3]) / 2) ** 2)
            used.add(best)
            hits += 1
    return hits


def f1_counts(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Precision, recall and F1 of object counts (0 where a figure has nothing to divide by)."""
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4)}


def micro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Micro-averaged F1 of multi-label answers (arrays of the same shape; truth > 0 is a true label)."""
    tp = float((predicted & (truth > 0)).sum())
    return 2 * tp / max(1.0, float(predicted.sum() + (truth > 0).sum()))


def balanced_accuracy(pairs: Sequence[tuple[bool, bool]], names: tuple[str, str]) -> dict[str, Any]:
    """Balanced accuracy of a two-way decision over (truth, predicted) pairs; ``names`` = (False's, True's)."""
    truth = np.array([t for t, _ in pairs], bool)
    predicted = np.array([p for _, p in pairs], bool)
    recalls = {name: float((predicted[truth == value] == value).mean()) if (truth == value).any() else None
               for name, value in ((names[0], False), (names[1], True))}
    known = [r for r in recalls.values() if r is not None]
    return {"figures": len(pairs), names[1]: int(truth.sum()),
            "balanced_accuracy": round(float(np.mean(known)), 4) if known else None,
            "recall": {k: None if v is None else round(v, 4) for k, v in recalls.items()}}


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation of per-fold figures, with the figures themselves."""
    array = np.array(values, float)
    return {"mean": round(float(array.mean()), 4), "std": round(float(array.std(ddof=1)), 4) if len(array) > 1
            else None, "per_fold": [float(v) for v in array]}


def bootstrap_interval(groups: Sequence[Any], statistic: Callable[[list[Any]], float], rounds: int = 2000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over groups resampled with replacement (cells, slides, spreads),
    so that a figure carried by few groups gets the width it deserves."""
    rng = np.random.default_rng(seed)
    groups = list(groups)
    values = [statistic([groups[k] for k in rng.integers(0, len(groups), len(groups))]) for _ in range(rounds)]
    tail = (1 - level) / 2 * 100
    return round(float(np.percentile(values, tail)), 4), round(float(np.percentile(values, 100 - tail)), 4)


def temper(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities with their logits divided by ``temperature`` (above 1: less confident)."""
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    tempered = np.exp(logits)
    return tempered / tempered.sum(axis=-1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (temperature scaling)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        tempered = temper(probabilities, float(np.exp(log_t)))
        return float(-np.log(np.clip(tempered[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())

    return round(float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x)), 4)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """How far the top probability is from the share of right answers, averaged over confidence bins
    (weighted by their size): 0 when "probability 0.9" is right 9 times in 10."""
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(float((predicted[inside] == labels[inside]).mean()) - confidence[inside].mean())
    return round(float(error), 4)
