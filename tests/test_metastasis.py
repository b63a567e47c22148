"""The metastasis model through the API: one patch, a region (grid, polygons, heatmap, GeoJSON), options."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PCAM, needs
from tests.images import encode, section


def post(client, image: Image.Image, **fields):
    data = {"image": (io.BytesIO(encode(image)), "field.png"), **{k: str(v) for k, v in fields.items()}}
    return client.post("/model/metastasis/predict", data=data, content_type="multipart/form-data")


def test_one_patch_answers_tumor_and_normal_highest_first(client):
    body = post(client, Image.fromarray(section((96, 96)))).get_json()
    labels = [p["label"] for p in body["predictions"]]
    probabilities = [p["probability"] for p in body["predictions"]]
    assert sorted(labels) == ["normal", "tumor"] and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3) and "grid" not in body


def test_a_region_is_tiled_into_a_grid_of_the_models_cells(client):
    body = post(client, Image.fromarray(section((400, 300)))).get_json()
    grid = body["grid"]
    assert (grid["rows"], grid["cols"]) == (10, 13)  # 300/32 and 400/32 cells, rounded up
    values = np.array(grid["probabilities"], dtype=float)
    assert values.shape == (10, 13) and np.isnan(values[0, 0])  # glass corner: not scored
    assert grid["tissue_cells"] == int(np.isfinite(values).sum()) > 0
    top = next(p["probability"] for p in body["predictions"] if p["label"] == "tumor")
    assert top == pytest.approx(np.nanmax(values), abs=1e-4)
    for region in body["tumor_regions"]:
        assert region["max_probability"] >= 0.5 and len(region["polygon"]) >= 3


def test_mpp_option_rescales_the_upload(client):
    image = Image.fromarray(section((400, 300)))
    coarse = post(client, image, mpp=1.944).get_json()["grid"]  # twice the model's um/px: half the cells
    assert (coarse["rows"], coarse["cols"]) == (19, 25)
    assert coarse["cell_px"] == pytest.approx(16, abs=0.1)
    assert "grid" not in post(client, image, mpp=0.2).get_json()  # 82x62 px at the model's scale: one patch


def test_threshold_zero_makes_all_tissue_one_region(client):
    body = post(client, Image.fromarray(section((400, 300))), threshold=0).get_json()
    assert len(body["tumor_regions"]) == 1
    assert body["tumor_regions"][0]["area_px"] == pytest.approx(body["grid"]["tissue_cells"] * 32 ** 2, rel=0.01)


def test_png_is_a_heatmap_over_the_upload_and_geojson_is_a_feature_collection(client):
    image = Image.fromarray(section((400, 300)))
    response = post(client, image, format="png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    heatmap = Image.open(io.BytesIO(response.data))
    assert heatmap.width == 400 and heatmap.height > 300  # the upload plus a title strip with the colour key
    response = post(client, image, format="geojson", threshold=0)
    assert response.mimetype == "application/geo+json"
    document = json.loads(response.data)
    assert document["type"] == "FeatureCollection" and len(document["features"]) == 1
    xs = [x for x, _ in document["features"][0]["geometry"]["coordinates"][0]]
    assert 0 <= min(xs) and max(xs) <= 13 * 32  # pixel coordinates of the upload


@pytest.mark.parametrize("fields, message", [
    ({"mpp": "-1"}, "between"), ({"threshold": "1.5"}, "between"), ({"tissue_only": "maybe"}, "true or false"),
    ({"format": "svg"}, "one of"), ({"mpp": "nan"}, "number"),
])
def test_bad_options_are_400(client, fields, message):
    response = post(client, Image.fromarray(section((96, 96))), **fields)
    assert response.status_code == 400 and message in response.get_json()["message"]


def test_a_region_too_large_for_one_request_points_to_jobs(client):
    response = post(client, Image.fromarray(section((1000, 800))), mpp=10)  # 10x the model's scale: 83,000 cells
    assert response.status_code == 400 and "job" in response.get_json()["message"]


@needs(PCAM)
def test_shipped_model_on_held_out_pcam_patches(client):
    """A sample of PCam's validation split (other slides than training): clearly better than chance."""
    correct = total = 0
    for label in ("0", "1"):
        for path in sorted((PCAM / "valid" / label).glob("*.jpg"))[:40]:
            body = post(client, Image.open(path)).get_json()
            total += 1
            correct += body["predictions"][0]["label"] == ("tumor" if label == "1" else "normal")
    assert correct / total >= 0.75
