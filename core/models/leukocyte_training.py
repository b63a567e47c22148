"""Training data of the leukocyte model: ``<class>/*.jpeg`` crops, one leukocyte near the centre of each.

The files are augmented copies (rotations, flips, shifts) of fewer original cells, and their names do not
say which: the group of a file is the cell it shows, found by comparing the files themselves
(core.training.duplicates), so that no cell has copies on both sides of a split. Beside the network, a
one-hidden-layer perceptron on the cell's measures (core.models.leukocyte_measures) is fitted on the same
training cells and served with it (model.json ``measures``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.imageio import to_rgb8
from core.models.leukocyte import find_leukocytes
from core.models.leukocyte_measures import MEASURE_NAMES
from core.training.duplicates import polar_signature, same_object_groups
from core.training.perceptron import PerceptronClassifier, fit_perceptron
from core.training.recipe import Example, TrainingRecipe

#: the measure classifier: hidden ReLU units, and scikit-learn's L2 penalty alpha (larger: more regularised)
MEASURE_HIDDEN_UNITS = 64
MEASURE_ALPHA = 1.0

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

    def train_companions(self, settings, groups: dict[str, set[str]]) -> dict[str, Any]:
        """The measure classifier (model.json ``measures``), fitted on the network's training cells only: the
        validation cells stay unseen for the temperature, the test cells for the figures."""
        from core.training.data import load_arrays
        from core.training.trainer import save_network

        section = self.model.spec.meta.get("measures")
        if section is None:
            return {}
        arrays = load_arrays(self, settings.data, settings.cache_dir)
        train = np.flatnonzero(np.isin(arrays.groups, sorted(groups["train"])))
        measures = self.model.measures_of(arrays.x[train])
        network = fit_measure_classifier(measures, arrays.y[train], len(self.model.spec.labels)).to_keras()
        self.model.use_companion_network("measures", network)
        print(f"[measures] perceptron on {measures.shape[1]} measures of {len(train)} training files", flush=True)
        return {"measures": {**section, "fitted_on": f"{len(train)} files of {len(groups['train'])} training cells",
                             "hidden_units": MEASURE_HIDDEN_UNITS, "alpha": MEASURE_ALPHA,
                             "measures": len(MEASURE_NAMES),
                             "weights": save_network(network, settings.out, section["weights"]["file"])}}

    def combine(self, probabilities: np.ndarray, x: np.ndarray) -> np.ndarray:
        if self.model.companion_forward("measures") is None:
            return probabilities
        return self.model.combined(probabilities, self.model.measures_of(x))


def fit_measure_classifier(measures: np.ndarray, y: np.ndarray, classes: int) -> PerceptronClassifier:
    """The served measure classifier, fitted on these rows (the training command's and the studies' one way)."""
    return fit_perceptron(measures, y, classes, MEASURE_HIDDEN_UNITS, MEASURE_ALPHA)


RECIPE = LeukocyteTraining
