"""Field-level figures of multi-label answers (the protein model: which compartments a field's protein is in).

Per-class thresholds are chosen to maximise micro-F1 over fields, one class at a time from the best shared
threshold; a class may get "never" when answering it costs more than it gains. The trivial answer beside
every score is the constant one: the k most frequent training classes for every field (k chosen on the
training fields).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from core.evaluation import micro_f1

#: a class needs this many positive fields to be learnt, to get its own threshold and to be reported alone
MIN_FIELDS = 3
#: ... and out-of-fold average precision this far from chance (its prevalence, what random scores get) towards
#: a perfect 1: below, the scores carry next to nothing about the class, and it is never answered
LEARNT_OVER_CHANCE = 0.1
GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)


def learnt(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per class: enough positive fields, and out-of-fold ``scores`` that rank them well above chance."""
    positives = truth.sum(axis=0)
    return np.array([positives[k] >= MIN_FIELDS and positives[k] < len(truth) and
                     _over_chance(truth[:, k], scores[:, k]) >= LEARNT_OVER_CHANCE
                     or positives[k] == len(truth) for k in range(truth.shape[1])])


def _over_chance(truth: np.ndarray, scores: np.ndarray) -> float:
    """(average precision − prevalence) / (1 − prevalence): 0 at chance, 1 for a perfect ranking."""
    prevalence = truth.mean()
    return (average_precision_score(truth, scores) - prevalence) / (1 - prevalence)


def fit_thresholds(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per class, the threshold (``inf`` = never answered) that maximises micro-F1 over the fields, by
    coordinate ascent from the best shared threshold; classes not :func:`learnt` from these out-of-fold
    ``scores`` are never answered."""
    shared = max(GRID, key=lambda t: micro_f1(truth, scores >= t))
    thresholds = np.full(truth.shape[1], shared, float)
    learnable = learnt(truth, scores)
    thresholds[~learnable] = np.inf
    candidates = np.append(GRID, np.inf)
    for _ in range(2):
        for k in np.flatnonzero(learnable):
            def score(t: float) -> float:
                trial = thresholds.copy()
                trial[k] = t
                return micro_f1(truth, scores >= trial)
            thresholds[k] = max(candidates, key=score)
    return thresholds


def constant_answer(train_truth: np.ndarray) -> np.ndarray:
    """The class set (boolean per class) a model without eyes would answer for every field: the k most
    frequent training classes, k maximising micro-F1 on the training fields."""
    order = np.argsort(-train_truth.sum(axis=0), kind="stable")

    def answer(k: int) -> np.ndarray:
        chosen = np.zeros(train_truth.shape[1], bool)
        chosen[order[:k]] = True
        return chosen

    best = max(range(1, 6), key=lambda k: micro_f1(train_truth, np.broadcast_to(answer(k), train_truth.shape)))
    return answer(best)


def field_report(truth: np.ndarray, scores: np.ndarray, decisions: np.ndarray, names: list[str],
                 copies: int = 1) -> dict[str, Any]:
    """Micro-F1 and its parts, macro-F1 and mean average precision over the classes with at least MIN_FIELDS
    positive fields, and per-class figures for those classes (fields × classes arrays, each field given
    ``copies`` times when answers of repeated cross-validations are pooled)."""
    supported = np.flatnonzero(truth.sum(axis=0) >= MIN_FIELDS * copies)
    p, r, f, support = precision_recall_fscore_support(truth, decisions, zero_division=0)
    micro = precision_recall_fscore_support(truth, decisions, average="micro", zero_division=0)
    average_precision = {k: float(average_precision_score(truth[:, k], scores[:, k])) for k in supported}
    return {
        "fields": int(len(truth) // copies),
        "micro_f1": round(float(micro[2]), 4), "micro_precision": round(float(micro[0]), 4),
        "micro_recall": round(float(micro[1]), 4),
        "macro_f1": round(float(np.mean(f[supported])), 4) if len(supported) else None,
        "mean_average_precision": round(float(np.mean(list(average_precision.values()))), 4)
        if len(supported) else None,
        "per_class": {names[k]: {"precision": round(float(p[k]), 4), "recall": round(float(r[k]), 4),
                                 "f1": round(float(f[k]), 4), "average_precision": round(average_precision[k], 4),
                                 "prevalence": round(float(truth[:, k].mean()), 4),
                                 "support_fields": int(support[k] // copies)} for k in supported},
    }
