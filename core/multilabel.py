"""A field's multi-label scores from its cells', shared by the protein model and its training."""
from __future__ import annotations

import numpy as np

#: a field's score for a class is this percentile over its cells' probabilities (a quarter of its cells
#: show the class): steadier than the maximum, which one odd cell decides
FIELD_PERCENTILE = 75


def field_scores(cell_probabilities: np.ndarray) -> np.ndarray:
    """One field's class scores from its cells' (cells × classes)."""
    return np.percentile(cell_probabilities, FIELD_PERCENTILE, axis=0)
