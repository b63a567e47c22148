"""Field-level figures of multi-label training (e.g. protein: weak field labels per cell).

Examples carry their labels as an integer bit mask (so the shared decoded-data cache serves them too).
Fields of the weakly labelled sources are split into folds: one is the test split, the next the validation
split (early stopping and threshold calibration); fields of exact-label sources (semi-synthetic
single-pattern cells) always train. Classes are balanced by sample weights. A field's score for a class is
the 75th percentile over its cells (a quarter of its cells show it: steadier than the maximum, which one
odd cell decides); the report is per field: micro-F1, macro-F1, per-class figures, mean average precision,
and the micro-F1 of always answering the most frequent training classes, for scale.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from core.evaluation import micro_f1
from core.multilabel import field_scores

MIN_TRUSTED_FIELDS = 3  # a class seen in fewer training fields than this is reported as untrustworthy
MIN_CALIBRATION_FIELDS = 3  # a class gets its own threshold only with this many positive validation fields


def split_fields(groups: np.ndarray, exact: np.ndarray, folds: int, fold: int, seed: int) -> dict[str, np.ndarray]:
    fields = np.array(sorted(set(groups[~exact])))
    order = np.random.default_rng(seed).permutation(len(fields))
    parts = np.array_split(fields[order], folds)
    test, val = set(parts[fold]), set(parts[(fold + 1) % folds])
    in_test, in_val = np.isin(groups, list(test)), np.isin(groups, list(val))
    return {"train": np.flatnonzero(~in_test & ~in_val), "val": np.flatnonzero(in_val), "test": np.flatnonzero(in_test)}


def per_field(groups: np.ndarray, y: np.ndarray, p: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Field truth (its labels) and field scores (a percentile over its cells)."""
    names = sorted(set(groups))
    truth = np.stack([y[groups == g][0] for g in names])
    scores = np.stack([field_scores(p[groups == g]) for g in names])
    return names, truth, scores


def calibrate(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per class, the threshold with the best F1 on validation fields where it has enough positive fields
    to say; elsewhere the shared threshold with the best micro-F1 (per-class thresholds fitted on one or
    two fields do not carry over to new fields)."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    shared = max(grid, key=lambda th: micro_f1(truth, scores >= th))
    return np.array([max(grid, key=lambda th: micro_f1(truth[:, k], scores[:, k] >= th))
                     if truth[:, k].sum() >= MIN_CALIBRATION_FIELDS else shared
                     for k in range(truth.shape[1])], np.float32)


def most_frequent_baseline(train_y: np.ndarray, val_truth: np.ndarray, test_truth: np.ndarray) -> float:
    """Micro-F1 on the test fields of always answering the k most frequent training classes (k chosen on
    the validation fields): what the model must beat to have learnt anything from the pixels."""
    order = np.argsort(-train_y.sum(axis=0))

    def constant(truth: np.ndarray, k: int) -> np.ndarray:
        predicted = np.zeros_like(truth, bool)
        predicted[:, order[:k]] = True
        return predicted

    best_k = max(range(1, 6), key=lambda k: micro_f1(val_truth, constant(val_truth, k)))
    return round(micro_f1(test_truth, constant(test_truth, best_k)), 4)


def field_report(truth: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, names: list[str]) -> dict[str, Any]:
    predicted = (scores >= thresholds).astype(int)
    present = np.flatnonzero(truth.sum(axis=0) > 0)
    p, r, f, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    micro = precision_recall_fscore_support(truth, predicted, average="micro", zero_division=0)
    return {
        "fields": int(len(truth)),
        "micro_f1": round(float(micro[2]), 4), "micro_precision": round(float(micro[0]), 4),
        "micro_recall": round(float(micro[1]), 4),
        "macro_f1_classes_present": round(float(np.mean(f[present])), 4) if len(present) else None,
        "mean_average_precision": round(float(np.mean([average_precision_score(truth[:, k], scores[:, k])
                                                       for k in present])), 4) if len(present) else None,
        "per_class": {names[k]: {"precision": round(float(p[k]), 4), "recall": round(float(r[k]), 4),
                                 "f1": round(float(f[k]), 4), "support_fields": int(support[k])} for k in present},
    }
