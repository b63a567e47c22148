"""Training data of the leukocyte model: ``<class>/*.jpeg`` crops, one leukocyte near the centre of each.

The files are augmented copies (rotations, flips, shifts) of fewer original cells, and their names do not
say which: the group of a file is the cell it shows, found by comparing the files themselves
(core.training.duplicates), so that no cell has copies on both sides of a split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.imageio import to_rgb8
from core.models.leukocyte import find_leukocytes
from core.training.duplicates import polar_signature, same_object_groups
from core.training.recipe import Example, TrainingRecipe

SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


class LeukocyteTraining(TrainingRecipe):
    temperature_scaling = True

    def files(self, data_dir: Path) -> list[Example]:
        """Every crop, grouped by the original cell it shows (within its class)."""
        examples = []
        for label, name in enumerate(self.model.spec.label_names):
            paths = sorted(p for p in (data_dir / name).glob("*") if p.suffix.lower() in SUFFIXES)
            signatures = np.stack([self.signature(path) for path in paths]) if paths else np.zeros((0, 1, 1))
            cells = same_object_groups(signatures)
            examples += [Example(path, label, f"{name}/cell{cell}") for path, cell in zip(paths, cells)]
        return examples

    def signature(self, path: Path) -> np.ndarray:
        with Image.open(path) as image:
            rgb = to_rgb8(image)
        cells = find_leukocytes(rgb, self.model.input.min_nucleus_area_px)
        centre = max(cells, key=lambda c: c.area).centre if cells else (rgb.shape[1] / 2, rgb.shape[0] / 2)
        return polar_signature(rgb, centre)

    def network_input(self, image: Image.Image) -> np.ndarray:
        return self.model.network_input(image)


RECIPE = LeukocyteTraining
