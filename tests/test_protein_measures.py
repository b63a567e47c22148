"""The protein model's measures, classifier and picture, on synthetic cells whose answer is known."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.models.protein_features import FEATURE_NAMES, cell_features
from core.training.linear import fit_one_vs_rest
from core.training.multilabel import constant_answer, fit_thresholds
from tests.images import encode, hpa_field

SIZE, CENTRE, CELL_R, NUCLEUS_R = 160, (80, 80), 50, 22


def one_cell(green: str, seed: int = 0) -> dict[str, float]:
    """A round cell with a round nucleus, red/yellow in the cytoplasm, blue in the nucleus, and green as named;
    returns its measures by name."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - CENTRE[1], xx - CENTRE[0])
    cell, nucleus = r < CELL_R, r < NUCLEUS_R
    channels = np.zeros((SIZE, SIZE, 4), np.float32)
    texture = rng.uniform(0.2, 1.0, (SIZE, SIZE)).astype(np.float32)
    channels[..., 0] = 0.5 * texture * cell
    channels[..., 2] = 0.8 * nucleus
    channels[..., 3] = 0.3 * (cell & ~nucleus)
    nucleoli = nucleus & (np.hypot(yy - 75, xx - 75) < 5)
    patterns = {
        "nucleus": 0.7 * nucleus,
        "cytoplasm": 0.5 * (cell & ~nucleus),
        "microtubules": channels[..., 0],
        "edge": 0.8 * (cell & (r > CELL_R - 4)),
        "nucleoli": 0.9 * nucleoli + 0.05 * nucleus,
    }
    if green == "nucleoli":
        channels[..., 2] *= ~nucleoli  # nucleoli are dark in the DNA stain
    channels[..., 1] = patterns[green]
    labels = cell.astype(np.int32)
    values = cell_features(channels, labels, nucleus.astype(np.int32))
    assert values.shape == (1, len(FEATURE_NAMES)) and np.isfinite(values).all()
    return dict(zip(FEATURE_NAMES, values[0]))


def test_green_only_in_the_nucleus_is_all_nuclear():
    measures = one_cell("nucleus")
    assert measures["nuclear_share"] > 0.97 and measures["nuclear_enrichment"] > 2
    assert measures["pearson_blue"] > 0.95


def test_green_only_in_the_cytoplasm_is_not_nuclear():
    measures = one_cell("cytoplasm")
    assert measures["nuclear_share"] < 0.03 and measures["pearson_blue"] < -0.5
    assert measures["pearson_yellow"] > 0.95


def test_green_equal_to_red_correlates_perfectly_with_red():
    measures = one_cell("microtubules")
    assert measures["pearson_red"] > 0.999 and measures["manders_green_in_red"] > 0.5


def test_green_at_the_cell_edge_is_edge_enriched_and_peripheral():
    measures = one_cell("edge")
    assert measures["cell_edge_enrichment"] > 3 and measures["radial_3"] > 3 * measures["radial_0"]


def test_green_in_nucleoli_is_in_the_dark_parts_of_the_nucleus_and_spotty():
    measures, plain = one_cell("nucleoli"), one_cell("nucleus")
    assert measures["nucleolus_enrichment"] > 5 and plain["nucleolus_enrichment"] <= 1.0
    assert measures["spot_share"] > plain["spot_share"] and measures["nuclear_spot_share"] > 0.9


def test_measures_do_not_depend_on_the_exposure():
    rng = np.random.default_rng(1)
    channels = rng.uniform(0, 0.4, (SIZE, SIZE, 4)).astype(np.float32)
    cells = np.zeros((SIZE, SIZE), np.int32)
    cells[20:140, 20:140] = 1
    nuclei = np.zeros_like(cells)
    nuclei[60:100, 60:100] = 1
    once = cell_features(channels, cells, nuclei)
    brighter = channels.copy()
    brighter[..., 1] *= 2  # twice the protein exposure; background outside the cell is 0 here
    brighter[cells == 0] = 0
    plain = channels.copy()
    plain[cells == 0] = 0
    np.testing.assert_allclose(cell_features(brighter, cells, nuclei)[0, 3:], cell_features(plain, cells, nuclei)[0, 3:],
                               rtol=1e-3, atol=1e-3)
    assert once.shape == (1, len(FEATURE_NAMES))


def test_the_served_keras_layer_gives_the_fitted_regressions_probabilities():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (300, 6)).astype(np.float32)
    y = np.zeros((300, 4), np.int8)
    y[:, 0] = x[:, 0] + rng.normal(0, 1, 300) > 3
    y[:, 2] = x[:, 1] - x[:, 2] + rng.normal(0, 1, 300) > 0
    y[:, 3] = 1  # every row: answered at its (bounded) rate
    classifier = fit_one_vs_rest(x, y, [0, 2, 3], strength=0.5)
    scaled = StandardScaler().fit(x)
    for k in (0, 2):
        reference = LogisticRegression(C=0.5, max_iter=3000).fit(scaled.transform(x), y[:, k])
        np.testing.assert_allclose(classifier.probabilities(x)[:, k],
                                   reference.predict_proba(scaled.transform(x))[:, 1], atol=1e-5)
    served = classifier.to_keras()(x).numpy()
    np.testing.assert_allclose(served, classifier.probabilities(x), atol=1e-5)
    assert served[:, 1].max() < 1e-9 and np.allclose(served[:, 3], 0.99, atol=1e-4)


def test_thresholds_never_answer_a_class_with_too_few_fields_and_the_constant_answer_is_the_best_k():
    truth = np.zeros((12, 3), np.int8)
    truth[:9, 0] = 1          # frequent
    truth[[0, 5], 1] = 1      # two fields only: cannot be learnt
    truth[6:, 2] = 1
    scores = truth * 0.8 + 0.1
    thresholds = fit_thresholds(truth, scores)
    assert np.isinf(thresholds[1]) and np.isfinite(thresholds[[0, 2]]).all()
    assert ((scores >= thresholds) == truth.astype(bool))[:, [0, 2]].all()
    # always answering classes 0 and 2: 15 right of 24 answers, 17 labels (F1 0.73) beats class 0 alone (0.62)
    assert constant_answer(truth).tolist() == [True, False, True]


@pytest.fixture()
def drawn(client):
    """(PNG answer, JSON answer) for a field whose second cell touches the right border."""
    files = {name: encode(image) for name, image in hpa_field(cells=((80, 90), (240, 160))).items()}

    def post(**form):
        data = {name: (io.BytesIO(content), f"{name}.png") for name, content in files.items()}
        data.update(form)
        return client.post("/model/protein/predict", data=data, content_type="multipart/form-data")
    return post(format="png"), post().get_json()


def test_the_picture_has_a_banner_and_a_key_and_keeps_numbers_inside(drawn):
    png, body = drawn
    picture = Image.open(io.BytesIO(png.data))
    assert picture.width > 256 and picture.height > 256  # key beside, banner above
    from core.models.protein import ProteinModel

    draw = ImageDraw.Draw(Image.new("RGB", (256, 256)))
    font = ProteinModel.font(256)
    corners = [{"cell_id": k, "bbox": bbox} for k, bbox in
               enumerate(([0, 0, 4, 4], [250, 250, 6, 6], [0, 240, 10, 16], [240, 0, 16, 8]), 1)]
    for text, (left, top, right, bottom) in ProteinModel.number_boxes(corners + body["predictions"], draw, font,
                                                                       (256, 256)):
        assert 0 <= left and 0 <= top and right <= 256 and bottom <= 256, (text, left, top, right, bottom)


def test_classes_the_model_never_answers_are_listed_and_never_emitted(client):
    meta = client.get("/model/protein/metadata").get_json()
    never = set(meta["inference"]["not_predicted"]["classes"])
    names = [label["name"] for label in client.get("/model/protein/labels").get_json()["labels"]]
    assert never == {names[k] for k, t in enumerate(meta["inference"]["thresholds"]) if t is None} and never
    files = {name: encode(image) for name, image in hpa_field().items()}
    data = {name: (io.BytesIO(content), f"{name}.png") for name, content in files.items()}
    data["threshold_scale"] = "0.1"
    body = client.post("/model/protein/predict", data=data, content_type="multipart/form-data").get_json()
    emitted = {label["label"] for label in body["image_labels"]}
    emitted |= {label["label"] for cell in body["predictions"] for label in cell["labels"]}
    emitted |= {cell["label"] for cell in body["predictions"]}
    assert emitted and not emitted & never
