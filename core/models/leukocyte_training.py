"""Training data of the leukocyte model: ``<class>/_N_M.jpeg`` crops, N the original cell, M its augmentation."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from core.training.recipe import Example, TrainingRecipe

FILE_PATTERN = re.compile(r"_(\d+)_(\d+)\.jpe?g$", re.IGNORECASE)


class LeukocyteTraining(TrainingRecipe):
    def files(self, data_dir: Path) -> list[Example]:
        """Every crop; all augmentations of one original cell share its group, so no cell is on both sides."""
        examples = []
        for label, name in enumerate(self.model.spec.label_names):
            for path in sorted((data_dir / name).glob("*")):
                match = FILE_PATTERN.search(path.name)
                if match:
                    examples.append(Example(path, label, f"{name}/{match.group(1)}"))
        return examples

    def network_input(self, image: Image.Image) -> np.ndarray:
        return self.model.network_input(image)


RECIPE = LeukocyteTraining
