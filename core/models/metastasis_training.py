"""Training data of the metastasis model: PatchCamelyon's ``{train,valid}/{0,1}/`` patches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.training.recipe import Example, TrainingRecipe

SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


class MetastasisTraining(TrainingRecipe):
    rotation_fill = "reflect"  # tissue continues past a patch's edge; black corners would be a shortcut

    def files(self, data_dir: Path) -> list[Example]:
        """0 normal, 1 tumour; each patch its own group."""
        examples = []
        for split in ("train", "valid"):
            for label, name in enumerate(("0", "1")):
                for path in sorted((data_dir / split / name).glob("*")):
                    if path.suffix.lower() in SUFFIXES:
                        examples.append(Example(path, label, f"{split}/{name}/{path.stem}"))
        return examples

    def network_input(self, image: Image.Image) -> np.ndarray:
        return self.model.network_input(image)

    def predefined_test(self, groups: np.ndarray) -> np.ndarray | None:
        """PCam's valid patches come from other slides than its train patches: they are the test split."""
        held_out = np.char.startswith(groups.astype(str), "valid/")
        return held_out if held_out.any() and not held_out.all() else None


RECIPE = MetastasisTraining
