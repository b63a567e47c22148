"""Training data of the protein model: folders in Kaggle's HPA layout (``train.csv`` or ``labels.csv`` with
``Id,Target``, images in ``train/`` or ``images/`` as ``<Id>_<channel>.png``). One example per segmented
cell, labelled with its field's labels (weak labels); the group is the field."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from core.imageio import grey_to_unit
from core.models.protein import CHANNELS, Field
from core.multilabel import labels_to_mask
from core.training.recipe import TrainingRecipe


class ProteinTraining(TrainingRecipe):
    multi_label = True

    def sources(self, data_dir: Path) -> list[Path]:
        """The data dir itself when it is in Kaggle's layout, else each subfolder that is (model.json's
        ``data.sources`` names which: the shared data holds only 2018-scheme sets there)."""
        def usable(folder: Path) -> bool:
            return any((folder / name).is_file() for name in ("train.csv", "labels.csv"))

        if usable(data_dir):
            return [data_dir]
        named = self.model.spec.meta.get("data", {}).get("sources")
        return [p for p in sorted(data_dir.iterdir())
                if p.is_dir() and usable(p) and (named is None or p.name in named)]

    def examples(self, data_dir: Path) -> Iterator[tuple[np.ndarray, int, str]]:
        defaults = {option.name: option.default for option in self.model.declared_options()}
        for source in self.sources(data_dir):
            table = source / ("train.csv" if (source / "train.csv").is_file() else "labels.csv")
            images = source / ("train" if (source / "train").is_dir() else "images")
            with open(table, newline="") as handle:
                for row in csv.DictReader(handle):
                    labels = [int(v) for v in row["Target"].replace("|", " ").split()]
                    planes = []
                    for name in CHANNELS:
                        with Image.open(images / f"{row['Id']}_{name}.png") as image:
                            planes.append(grey_to_unit(image))
                    batch, _ = self.model.preprocess(Field(np.stack(planes, axis=-1)), defaults)
                    for crop in batch.astype(np.uint8):
                        yield crop, labels_to_mask(labels), f"{source.name}/{row['Id']}"


RECIPE = ProteinTraining
