"""Finding augmented copies of one object among training files (core.training.duplicates), on drawn smears."""
from __future__ import annotations

import numpy as np
from PIL import Image

from core.models.leukocyte import find_leukocytes
from core.training.duplicates import polar_signature, same_object_groups
from tests.images import smear


def copies(original: Image.Image, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Rotated (black corners, as in the leukocyte set), sometimes mirrored, shifted copies of ``original``."""
    out = []
    for _ in range(count):
        image = original.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else original
        image = image.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR,
                             translate=tuple(int(v) for v in rng.integers(-15, 16, 2)))
        out.append(np.asarray(image))
    return out


def signature(rgb: np.ndarray) -> np.ndarray:
    cells = find_leukocytes(rgb, 300)
    return polar_signature(rgb, max(cells, key=lambda c: c.area).centre)


def test_copies_of_one_cell_share_a_group_and_other_cells_do_not():
    rng = np.random.default_rng(3)
    truth, signatures = [], []
    for cell in range(12):  # same-looking leukocytes; their neighbourhoods (red cells) differ
        original = smear(leukocytes=((160, 120, 24),), platelets=(), seed=100 + cell)
        for rgb in copies(original, rng, 5):
            truth.append(cell)
            signatures.append(signature(rgb))
    groups = same_object_groups(np.stack(signatures))
    truth = np.array(truth)
    for cell in range(12):
        assert len(set(groups[truth == cell])) == 1, f"copies of cell {cell} were split: {groups[truth == cell]}"
    assert len(set(groups)) == 12  # no two cells merged


def test_a_file_without_copies_stays_alone_and_no_files_is_no_groups():
    rng = np.random.default_rng(4)
    signatures = [signature(rgb) for rgb in copies(smear(seed=1, platelets=()), rng, 3)]
    signatures.append(signature(np.asarray(smear(seed=2, platelets=()))))
    groups = same_object_groups(np.stack(signatures))
    assert len(set(groups[:3])) == 1 and groups[3] not in set(groups[:3])
    assert len(same_object_groups(np.zeros((0, 180, 64), np.float32))) == 0
