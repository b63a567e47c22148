"""The leukocyte model: segmentation on drawn smears, and real crops from ../shared when present."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from config import ROOT
from core.models.leukocyte import crop_window, find_leukocytes
from tests.conftest import LEUKOCYTE_DATA, needs
from tests.images import blank, smear


def test_segmentation_counts_drawn_leukocytes_and_ignores_platelets_and_red_cells():
    image = smear(size=(640, 480), leukocytes=((100, 100, 28), (320, 250, 32), (540, 380, 26)),
                  platelets=((200, 400), (450, 60), (600, 200)))
    cells = find_leukocytes(np.asarray(image), min_area=1000)
    assert len(cells) == 3
    for cell, (x, y) in zip(cells, [(100, 100), (320, 250), (540, 380)]):
        assert abs(cell.centre[0] - x) < 3 and abs(cell.centre[1] - y) < 3


def test_segmentation_finds_nothing_in_an_empty_field():
    assert find_leukocytes(np.asarray(blank()), min_area=1000) == []
    assert find_leukocytes(np.asarray(smear(leukocytes=(), platelets=())), min_area=1000) == []


def test_crop_window_pads_at_the_border():
    rgb = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_window(rgb, (5.0, 5.0), 40)
    assert crop.shape == (40, 40, 3)
    assert (crop[:10, :10] == 0).all() and (crop[-5:, -5:] == 200).all()


@needs(LEUKOCYTE_DATA)
def test_real_crops_of_held_out_cells_get_the_right_label(app):
    """Crops of cells the shipped model never saw (its test fold), ten per class, drawn at random."""
    from core.models.leukocyte_training import FILE_PATTERN, LeukocyteTraining
    from core.training.data import grouped_split

    meta = json.loads((ROOT / "assets" / "leukocyte" / "model.json").read_text())
    settings = meta["training"]["settings"]
    model = app.extensions["mmax_registry"].get("leukocyte")
    examples = LeukocyteTraining(model).files(LEUKOCYTE_DATA)
    y = np.array([e.label for e in examples])
    groups = np.array([e.group for e in examples])
    _, test = grouped_split(y, groups, settings["folds"], settings["fold"], settings["seed"])
    rng = np.random.default_rng(1)
    names = model.spec.label_names
    correct = {name: 0 for name in names}
    for label, name in enumerate(names):
        chosen = rng.choice(test[y[test] == label], 10, replace=False)
        for index in chosen:
            assert FILE_PATTERN.search(examples[index].path.name)
            with Image.open(examples[index].path) as image:
                result = model.predict(image.convert("RGB"), {"format": "json", "scale": 1.0})
            assert result["predictions"], f"no leukocyte found in {examples[index].path}"
            # The labelled cell is the largest in its crop, as in training.
            largest = max(result["predictions"], key=lambda p: p["bbox"][2] * p["bbox"][3])
            correct[name] += largest["label"] == name
    assert sum(correct.values()) >= 0.8 * 40, correct
    assert all(count >= 6 for count in correct.values()), correct
