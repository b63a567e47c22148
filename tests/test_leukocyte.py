"""The leukocyte model: segmentation on drawn smears, and real crops from ../shared when present."""
from __future__ import annotations

import json

import numpy as np
import pytest
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


def test_the_answer_combines_the_network_with_the_measure_classifier(app):
    """What the service answers for each cell is the network's and the measure classifier's probabilities
    combined (normalised geometric mean), then temperature-scaled: the combination the figures were measured on."""
    from core.evaluation import temper
    from core.models.leukocyte import geometric_mean

    model = app.extensions["mmax_registry"].get("leukocyte")
    classify = model.companion_forward("measures")
    assert classify is not None, "the shipped model.json names a measure classifier"
    defaults = {option.name: option.default for option in model.declared_options()}
    image = smear(size=(640, 480), leukocytes=((150, 140, 26), (420, 300, 30)), platelets=())
    batch, found = model.preprocess(image, defaults)
    network = model.run_network(batch)
    expected = temper(geometric_mean(network, classify(found.measures)), model.spec.meta["inference"]["temperature"])
    answer = model.predict(image, defaults)["predictions"]
    assert len(answer) == 2
    for prediction, row in zip(answer, expected):
        assert [prediction["probabilities"][name] for name in model.spec.label_names] == \
            pytest.approx(row.tolist(), abs=1e-4)


@needs(LEUKOCYTE_DATA)
def test_real_crops_of_held_out_cells_are_typed_as_well_as_the_metadata_claims(app):
    """Every crop of the cells the shipped model never saw (its test fold, grouped by the cell each file shows),
    through the serving code: their accuracy lies within sampling distance of the leave-cells-out figure that
    /metadata states, and uncertain answers are the less reliable ones. (All of the fold's ~480 crops: a sample
    of 60 holds too few uncertain answers, and too few mistakes, to compare the two.)"""
    from core.models.leukocyte_training import LeukocyteTraining
    from core.training.data import grouped_split

    meta = json.loads((ROOT / "assets" / "leukocyte" / "model.json").read_text())
    settings = meta["training"]["settings"]
    model = app.extensions["mmax_registry"].get("leukocyte")
    examples = LeukocyteTraining(model).files(LEUKOCYTE_DATA)
    y = np.array([e.label for e in examples])
    groups = np.array([e.group for e in examples])
    _, test = grouped_split(y, groups, settings["folds"], settings["fold"], settings["seed"])
    names = model.spec.label_names
    defaults = {option.name: option.default for option in model.declared_options()}
    right, sure, missed = [], [], 0
    for index in test:
        with Image.open(examples[index].path) as image:
            result = model.predict(image.convert("RGB"), defaults)
        if not result["predictions"]:
            missed += 1  # no leukocyte found: counted as a wrong answer
            continue
        # The labelled cell is the largest in its crop, as in training.
        largest = max(result["predictions"], key=lambda p: p["bbox"][2] * p["bbox"][3])
        right.append(largest["label"] == names[y[index]])
        sure.append(not largest["uncertain"])
    right, sure = np.array(right), np.array(sure)
    assert missed <= 0.01 * len(test), missed
    accuracy = right.sum() / len(test)
    claimed = meta["metrics"]["test"]["accuracy_interval_95"]
    assert claimed[0] - 0.12 <= accuracy <= claimed[1] + 0.12, (accuracy, claimed)
    assert sure.any() and (~sure).any()
    assert right[sure].mean() > right[~sure].mean() + 0.05, (right[sure].mean(), right[~sure].mean())
