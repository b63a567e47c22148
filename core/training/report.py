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
