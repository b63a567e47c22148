"""The leukocyte measures on cells drawn with a known answer, their classifier's export, and how the model
combines it with the network."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.models.leukocyte import geometric_mean
from core.models.leukocyte_measures import MEASURE_NAMES, cell_measures
from tests.images import PALE, PURPLE

GREY_BLUE = (170, 175, 215)   # monocyte-like cytoplasm
ORANGE_RED = (235, 120, 95)   # eosinophil-like granules


def drawn_cell(lobes: list[tuple[int, int, int]], cytoplasm=GREY_BLUE, granules: bool = False,
               size: int = 160) -> np.ndarray:
    """A window with one leukocyte at the centre: a cytoplasm disc, nucleus lobes (dx, dy, radius) from the
    centre, and optionally orange-red granules scattered in the cytoplasm."""
    image = Image.new("RGB", (size, size), PALE)
    draw = ImageDraw.Draw(image)
    c = size // 2
    draw.ellipse([c - 50, c - 50, c + 50, c + 50], fill=cytoplasm)
    if granules:
        rng = np.random.default_rng(0)
        for _ in range(300):
            angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(30, 48)
            x, y = c + radius * np.cos(angle), c + radius * np.sin(angle)
            draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=ORANGE_RED)
    for dx, dy, r in lobes:
        draw.ellipse([c + dx - r, c + dy - r, c + dx + r, c + dy + r], fill=PURPLE)
    return np.asarray(image)


def measure(window: np.ndarray) -> dict[str, float]:
    return dict(zip(MEASURE_NAMES, cell_measures(window).tolist()))


def test_a_round_nucleus_is_one_round_lobe_of_its_drawn_area():
    m = measure(drawn_cell([(0, 0, 22)]))
    assert m["lobes"] == 1 and m["fine_lobes"] == 1
    assert m["nucleus_area"] == pytest.approx(np.pi * 22 ** 2, rel=0.05)
    assert m["nucleus_solidity"] > 0.95 and m["nucleus_eccentricity"] < 0.2
    assert m["nucleus_roundness"] < 1.2
    assert m["nucleus_thickness"] == pytest.approx(22, abs=1.5)


def test_three_lobes_joined_by_thin_strands_are_counted_as_three():
    window = drawn_cell([(-24, 0, 11), (0, -6, 11), (24, 0, 11)])
    draw = ImageDraw.Draw(image := Image.fromarray(window))
    draw.line([(56, 80), (104, 80)], fill=PURPLE, width=3)  # the strands between lobes: gone after erosion
    m = measure(np.asarray(image))
    assert m["lobes"] == 3
    assert m["nucleus_solidity"] < measure(drawn_cell([(0, 0, 22)]))["nucleus_solidity"]


def test_orange_red_granules_and_grey_blue_cytoplasm_are_told_apart():
    eosinophil_like = measure(drawn_cell([(-14, 0, 11), (14, 0, 11)], cytoplasm=(235, 200, 190), granules=True))
    monocyte_like = measure(drawn_cell([(0, 0, 24)], cytoplasm=GREY_BLUE))
    assert eosinophil_like["cytoplasm_red_granule_share"] > 0.2 > monocyte_like["cytoplasm_red_granule_share"]
    assert monocyte_like["cytoplasm_blue_hue_share"] > 0.8 > eosinophil_like["cytoplasm_blue_hue_share"]
    assert eosinophil_like["cytoplasm_fine_texture"] > monocyte_like["cytoplasm_fine_texture"]
    assert eosinophil_like["lobes"] == 2


def test_the_centre_cell_is_measured_not_a_neighbour():
    window = drawn_cell([(0, 0, 14)])
    ImageDraw.Draw(image := Image.fromarray(window)).ellipse([0, 0, 40, 40], fill=PURPLE)  # a neighbour's nucleus
    assert measure(np.asarray(image))["nucleus_area"] == pytest.approx(np.pi * 14 ** 2, rel=0.08)


@pytest.mark.parametrize("window", [np.full((160, 160, 3), PALE, np.uint8), np.zeros((160, 160, 3), np.uint8),
                                    np.full((160, 160, 3), PURPLE, np.uint8), np.zeros((160, 160), np.uint8)])
def test_a_window_without_a_measurable_cell_gives_zeros(window):
    measures = cell_measures(window)
    assert measures.shape == (len(MEASURE_NAMES),) and np.isfinite(measures).all()
    assert not measures.any()


def test_the_exported_multinomial_classifier_gives_scikit_learns_probabilities():
    from sklearn.linear_model import LogisticRegression

    from core.training.linear import fit_multinomial

    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (400, 7)).astype(np.float32)
    y = np.argmax(x[:, :4] + rng.normal(0, 2, (400, 4)), axis=1)
    classifier = fit_multinomial(x, y, 4, strength=0.5)
    standardised = (x - x.mean(axis=0)) / x.std(axis=0)
    reference = LogisticRegression(C=0.5, max_iter=5000).fit(standardised, y).predict_proba(standardised)
    np.testing.assert_allclose(classifier.probabilities(x), reference, atol=1e-4)
    np.testing.assert_allclose(classifier.to_keras()(x).numpy(), reference, atol=1e-4)
    with pytest.raises(ValueError, match="every one of the 4 classes"):
        fit_multinomial(x, np.minimum(y, 2), 4)


def test_the_exported_perceptron_gives_scikit_learns_probabilities():
    from sklearn.neural_network import MLPClassifier

    from core.training.perceptron import fit_perceptron

    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (400, 7)).astype(np.float32)
    y = np.argmax(x[:, :4] * x[:, 4:5] + rng.normal(0, 4, (400, 4)), axis=1)  # not separable by a plane
    classifier = fit_perceptron(x, y, 4, hidden_units=16, alpha=0.5, seed=3)
    standardised = (x - x.mean(axis=0)) / x.std(axis=0)
    reference = MLPClassifier((16,), alpha=0.5, max_iter=3000, random_state=3).fit(standardised, y)
    np.testing.assert_allclose(classifier.probabilities(x), reference.predict_proba(standardised), atol=1e-4)
    np.testing.assert_allclose(classifier.to_keras()(x).numpy(), reference.predict_proba(standardised), atol=1e-4)
    assert (classifier.probabilities(x).argmax(axis=1) == y).mean() > 0.5  # it learned something (chance: ~0.25)
    with pytest.raises(ValueError, match="every one of the 4 classes"):
        fit_perceptron(x, np.where(y == 3, 2, y), 4)


def test_the_combination_is_a_normalised_geometric_mean():
    network = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.4, 0.0, 0.6, 0.0]])
    measures = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.6, 0.2, 0.2, 0.0]])
    combined = geometric_mean(network, measures)
    np.testing.assert_allclose(combined.sum(axis=1), 1.0)
    np.testing.assert_allclose(combined[0], network[0], atol=1e-9)  # agreement keeps the answer
    assert combined[1].argmax() == 2  # an undecided network defers to the measures
    np.testing.assert_allclose(combined, geometric_mean(measures, network))  # equal weights
    expected = np.sqrt(network[2] * measures[2])
    np.testing.assert_allclose(combined[2], expected / expected.sum(), atol=1e-6)
