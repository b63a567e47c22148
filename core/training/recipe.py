"""How one model learns: the hooks the shared training command calls, one sibling module per model.

``core/models/<id>_training.py`` subclasses :class:`TrainingRecipe` and sets ``RECIPE``. The serving model
(``core/models/<id>.py``) stays free of data-set parsing, sampling, calibration and evaluation.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from core.model_base import MicroscopyModel


@dataclass(frozen=True)
class Example:
    """One training file: its path, label index and the group (original cell, slide…) it belongs to."""

    path: Path
    label: int
    group: str


class TrainingRecipe:
    #: augmentation: how free rotations fill the corners ("constant" black, or "reflect" tissue)
    rotation_fill: str = "constant"
    #: fit a softmax temperature on the validation groups, so that the served probabilities are calibrated
    temperature_scaling: bool = False

    def __init__(self, model: MicroscopyModel):
        self.model = model

    def train(self, settings) -> dict[str, Any] | None:
        """A model that is not a fine-tuned network (e.g. a classifier on measures) trains here, writes its
        assets into ``settings.out`` and returns model.json as written; None: the shared network pipeline
        (core.training.trainer) trains it from the hooks below."""
        return None

    def examples(self, data_dir: Path) -> Iterator[tuple[np.ndarray, int, str]]:
        """(network input, label, group) for every training example; by default one per file of :meth:`files`.
        A recipe whose files hold many examples (objects in a field) overrides this instead."""
        for example in self.files(data_dir):
            with Image.open(example.path) as image:
                yield self.network_input(image), example.label, example.group

    def files(self, data_dir: Path) -> list[Example]:
        raise NotImplementedError(f"model '{self.model.spec.id}' lists no training files")

    def network_input(self, image: Image.Image) -> np.ndarray:
        """One training file turned into the network's input, exactly as serving would see it."""
        raise NotImplementedError

    def predefined_test(self, groups: np.ndarray) -> np.ndarray | None:
        """A test split fixed by the data (boolean mask over examples, e.g. a data set's own validation
        slides), or None to hold out one of the grouped folds."""
        return None

    def train_companions(self, settings, groups: dict[str, set[str]]) -> dict[str, Any]:
        """Train the networks a model serves beside its main one (e.g. the mitosis subtype classifier) on the
        main network's split (``groups``: train / val / test groups), write their weights into
        ``settings.out``, serve them from ``self.model`` and return their model.json sections. Runs after the
        main network is fitted and before the evaluation, which sees the whole model."""
        return {}

    def combine(self, probabilities: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The model's answer for network inputs ``x`` from its network's ``probabilities``: the network's own,
        unless the model combines them with a companion's (leukocyte measures), so that the evaluation and the
        temperature see what the service answers."""
        return probabilities

    def training_only(self, groups: np.ndarray) -> np.ndarray | None:
        """Examples that only ever train (boolean mask over examples), e.g. hard negatives mined from a slide
        whose other part is reported: never in the early-stopping or test split. None: every example is split."""
        return None

    def calibrate(self, data_dir: Path, groups: set[str]) -> dict[str, dict[str, Any]] | None:
        """Settings chosen on the validation groups (never the test groups), with the trained network loaded:
        model.json sections to update, e.g. ``{"defaults": {"threshold": 0.8}}``. None: nothing to choose."""
        return None

    def recorded_split(self, data_dir: Path, cache_dir: Path, settings: dict[str, Any]):
        """(arrays, split) as the training run recorded in ``settings`` (model.json ``training.settings``) made
        them: the same examples, the same train / val / test groups."""
        from core.training.data import load_arrays

        arrays = load_arrays(self, data_dir, cache_dir)
        return arrays, self.split(arrays, settings.get("folds", 5), settings.get("fold", 0),
                                  settings.get("val_fraction", 0.2),
                                  settings.get("split_seed") if settings.get("split_seed") is not None
                                  else settings.get("seed", 0))

    def split(self, arrays, folds: int, fold: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
        """train / val / test indices: grouped folds (or the data set's own test split), with the
        ``training_only`` examples in train (core.training.data.three_way_split)."""
        from core.training.data import three_way_split

        return three_way_split(arrays, folds, fold, val_fraction, seed, self.predefined_test(arrays.groups),
                               self.training_only(arrays.groups))

    def domain_statistics(self, data_dir: Path, cache_dir: Path, settings: dict[str, Any]):
        """The domain check's statistics for the loaded network and their model.json section
        (core.training.domain), from the recorded split."""
        from core.training.domain import from_split

        arrays, split = self.recorded_split(data_dir, cache_dir, settings)
        return from_split(self.model, arrays.x, arrays.groups, split, settings.get("seed", 0))

    def held_out_groups(self, data_dir: Path, cache_dir: Path, settings: dict[str, Any]) -> set[str]:
        """The groups of the recorded test split: never trained on, never used to choose anything."""
        arrays, split = self.recorded_split(data_dir, cache_dir, settings)
        return set(arrays.groups[split["test"]].tolist())

    def uploads(self, data_dir: Path) -> list[tuple[dict[str, Path], str]]:
        """Every file of the data set as a user would upload it (file field → path), with its group."""
        return [({"image": example.path}, example.group) for example in self.files(data_dir)]

    def evaluate(self, data_dir: Path, groups: set[str]) -> dict[str, Any] | None:
        """Object-level figures on the held-out groups through the serving code, with the network loaded."""
        return None


def recipe_for(model: MicroscopyModel) -> TrainingRecipe:
    """The recipe in ``core/models/<id>_training.py``."""
    try:
        module = importlib.import_module(f"core.models.{model.spec.id}_training")
    except ModuleNotFoundError as exc:
        if exc.name == f"core.models.{model.spec.id}_training":
            raise SystemExit(f"model '{model.spec.id}' has no training recipe "
                             f"(core/models/{model.spec.id}_training.py)") from None
        raise
    return module.RECIPE(model)
