"""Classification metrics of a held-out split, in the shape stored in model.json."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_report(y_true: np.ndarray, probabilities: np.ndarray, groups: np.ndarray,
                          label_names: list[str]) -> dict[str, Any]:
    """Per-example figures, plus per-group ones (mean probability over each group's examples, e.g. one cell)
    where every group holds one label; a group of mixed labels (a spread, a slide) has no single answer."""
    labels = list(range(len(label_names)))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    group_ids = sorted(set(groups))
    report = {
        "examples": int(len(y_true)),
        "groups": int(len(group_ids)),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(y_true, y_pred)), 4),
        "per_class": {
            name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                   "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        },
        "confusion_matrix": {"labels": label_names, "rows_true_columns_predicted":
                             confusion_matrix(y_true, y_pred, labels=labels).tolist()},
    }
    if len(labels) == 2 and len(set(y_true)) == 2:  # two classes: the threshold-free figure too
        report["auc"] = round(float(roc_auc_score(y_true, probabilities[:, 1])), 4)
    if len(group_ids) < len(y_true) and all(len(set(y_true[groups == g])) == 1 for g in group_ids):
        group_true = np.array([y_true[groups == g][0] for g in group_ids])
        group_pred = np.array([probabilities[groups == g].mean(axis=0).argmax() for g in group_ids])
        report["group_accuracy"] = round(float(accuracy_score(group_true, group_pred)), 4)
    return report


def pooled_report(y_true: np.ndarray, probabilities: np.ndarray, groups: np.ndarray, label_names: list[str],
                  confidence_floor: float | None = None, rounds: int = 2000) -> dict[str, Any]:
    """Held-out predictions of every fold pooled (each example predicted once, by a model that never saw its
    group): the per-example report, the same per group (its examples' mean probability), 95 % intervals from
    resampling whole groups, and the majority-class answer beside it."""
    from core.evaluation import bootstrap_interval

    report = classification_report(y_true, probabilities, groups, label_names)
    names = sorted(set(groups))
    members = {g: np.flatnonzero(groups == g) for g in names}
    group_true = np.array([y_true[members[g][0]] for g in names])
    group_pred = np.array([probabilities[members[g]].mean(axis=0).argmax() for g in names])
    right_files = probabilities.argmax(axis=1) == y_true

    def file_accuracy(chosen: list[str]) -> float:
        return float(np.mean(np.concatenate([right_files[members[g]] for g in chosen])))

    group_right = dict(zip(names, group_pred == group_true))
    present = [k for k in range(len(label_names)) if (group_true == k).any()]
    majority = int(np.bincount(group_true).argmax())
    report["accuracy_interval_95"] = bootstrap_interval(names, file_accuracy, rounds)
    report["per_group"] = {
        "groups": len(names),
        "per_class": {label_names[k]: int((group_true == k).sum()) for k in present},
        "accuracy": round(float(np.mean(list(group_right.values()))), 4),
        "accuracy_interval_95": bootstrap_interval(names, lambda chosen: float(np.mean([group_right[g]
                                                                                        for g in chosen])), rounds),
        "recall": {label_names[k]: round(float((group_pred[group_true == k] == k).mean()), 4) for k in present},
        "balanced_accuracy": round(float(np.mean([(group_pred[group_true == k] == k).mean() for k in present])), 4),
    }
    if confidence_floor is not None:  # what the answer's "uncertain" flag separates
        sure = probabilities.max(axis=1) >= confidence_floor
        report["confidence_floor"] = {
            "floor": confidence_floor, "share_uncertain": round(float(1 - sure.mean()), 4),
            "accuracy_of_the_rest": round(float(right_files[sure].mean()), 4) if sure.any() else None,
            "accuracy_of_uncertain": round(float(right_files[~sure].mean()), 4) if (~sure).any() else None}
    report["majority_baseline"] = {"label": label_names[majority],
                                   "accuracy": round(float(np.mean(y_true == majority)), 4),
                                   "per_group_accuracy": round(float(np.mean(group_true == majority)), 4)}
    return report
