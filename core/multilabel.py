"""Helpers shared by multi-label models and their training: label bit masks and field scores."""
from __future__ import annotations

import numpy as np

#: a field's score for a class is this percentile over its cells' probabilities (a quarter of its cells
#: show the class): steadier than the maximum, which one odd cell decides
FIELD_PERCENTILE = 75


def labels_to_mask(labels: list[int]) -> int:
    """Class ids as one integer bit mask (the training cache stores one integer label per example)."""
    return sum(1 << k for k in set(labels))


def mask_to_multi_hot(masks: np.ndarray, n_classes: int) -> np.ndarray:
    return ((masks[:, None].astype(np.int64) >> np.arange(n_classes)) & 1).astype(np.float32)


def field_scores(cell_probabilities: np.ndarray) -> np.ndarray:
    """One field's class scores from its cells' (cells × classes)."""
    return np.percentile(cell_probabilities, FIELD_PERCENTILE, axis=0)
