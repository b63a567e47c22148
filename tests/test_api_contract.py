"""The contract of every route, with images the tests draw."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.images import blank, encode, smear


def predict(client, model="leukocyte", image: bytes | None = None, **fields):
    data = {"image": (io.BytesIO(image if image is not None else encode(smear())), "field.png"), **fields}
    return client.post(f"/model/{model}/predict", data=data, content_type="multipart/form-data")


def test_metadata_lists_every_model_from_model_json(client):
    body = client.get("/model/metadata").get_json()
    ids = [model["id"] for model in body["models"]]
    assert "leukocyte" in ids
    with open("assets/leukocyte/model.json") as handle:
        on_disk = json.load(handle)
    served = next(m for m in body["models"] if m["id"] == "leukocyte")
    for key in ("name", "description", "type", "source", "license", "version", "input", "labels", "metrics", "data"):
        assert served[key] == on_disk[key], key
    assert "weights" not in served  # file internals stay out of the API


def test_one_model_metadata_has_measured_metrics_and_options(client):
    meta = client.get("/model/leukocyte/metadata").get_json()
    assert meta["id"] == "leukocyte" and meta["status"] == "ready"
    test = meta["metrics"]["test"]
    confusion = np.array(test["confusion_matrix"]["rows_true_columns_predicted"])
    assert test["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-4)
    assert confusion.sum() == test["examples"]
    assert "held-out" in meta["metrics"]["split"]
    assert {option["name"] for option in meta["options"]} == {"format", "scale", "min_confidence"}


def test_labels(client):
    body = client.get("/model/leukocyte/labels").get_json()
    assert body["count"] == 4
    assert [label["name"] for label in body["labels"]] == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert [label["id"] for label in body["labels"]] == [0, 1, 2, 3]


def test_predict_finds_each_drawn_leukocyte_with_box_and_probabilities(client):
    image = smear(size=(640, 480), leukocytes=((150, 130, 30), (480, 340, 34)), platelets=((60, 400), (600, 40)))
    response = predict(client, image=encode(image))
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["model"] == "leukocyte"
    assert body["image"] == {"width": 640, "height": 480}
    boxes = [p["bbox"] for p in body["predictions"]]
    assert len(boxes) == 2  # the platelets are not counted
    for (x, y, w, h), (cx, cy) in zip(boxes, [(150, 130), (480, 340)]):
        assert x <= cx <= x + w and y <= cy <= y + h
        assert 0 <= x and 0 <= y and x + w <= 640 and y + h <= 480
    for prediction in body["predictions"]:
        assert 0.0 <= prediction["probability"] <= 1.0
        assert abs(sum(prediction["probabilities"].values()) - 1.0) < 1e-3
        assert prediction["probability"] == max(prediction["probabilities"].values())
        assert prediction["label"] in prediction["probabilities"]
    assert sum(body["counts"].values()) == 2
    assert set(body["counts"]) == {"eosinophil", "lymphocyte", "monocyte", "neutrophil"}


def test_no_leukocyte_gives_no_prediction(client):
    body = predict(client, image=encode(blank())).get_json()
    assert body["predictions"] == [] and sum(body["counts"].values()) == 0


def test_scale_option_maps_boxes_back_to_upload_pixels(client):
    image = smear(size=(640, 480), leukocytes=((320, 240, 60),), platelets=())
    body = predict(client, image=encode(image), scale="0.5").get_json()
    (x, y, w, h), = [p["bbox"] for p in body["predictions"]]
    assert x < 320 < x + w and y < 240 < y + h and w > 100  # in the 640x480 upload's pixels


def test_options_are_accepted_as_query_fields_too(client):
    image = encode(smear(size=(640, 480), leukocytes=((320, 240, 60),), platelets=()))
    as_form = predict(client, image=image, scale="0.5").get_json()
    as_query = client.post("/model/leukocyte/predict?scale=0.5", data={"image": (io.BytesIO(image), "a.png")},
                           content_type="multipart/form-data").get_json()
    unscaled = predict(client, image=image).get_json()
    assert as_query["predictions"] == as_form["predictions"] != unscaled["predictions"]


def test_format_png_returns_the_upload_with_boxes_drawn(client):
    original = smear()
    response = predict(client, image=encode(original), format="png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    drawn = Image.open(io.BytesIO(response.data)).convert("RGB")
    assert drawn.size == original.size
    assert drawn.tobytes() != original.tobytes()  # the box and its label were drawn


def test_grey_sixteen_bit_and_rgba_uploads_are_accepted(client):
    for mode in ("L", "I;16", "RGBA", "P"):
        image = smear().convert(mode) if mode != "I;16" else smear().convert("L").convert("I;16")
        assert predict(client, image=encode(image)).status_code == 200, mode


def test_jpeg_and_tiff_uploads(client):
    for fmt in ("JPEG", "TIFF", "BMP", "WEBP"):
        assert predict(client, image=encode(smear(), fmt)).status_code == 200, fmt


def test_health_live_and_ready(client):
    assert client.get("/health/live").get_json() == {"status": "ok"}
    ready = client.get("/health/ready")
    served = [model["id"] for model in client.get("/model/metadata").get_json()["models"]]
    assert ready.status_code == 200 and ready.get_json()["models"] == {model: "ready" for model in served}
    assert {"leukocyte", "chromosome"} <= set(served)


def test_metrics_count_requests_per_model(client):
    predict(client)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'mmax_requests_total{method="POST",model="leukocyte",route="/model/leukocyte/predict",status="200"}' in text
    assert "mmax_request_seconds_bucket" in text and 'mmax_inference_seconds_count{model="leukocyte"}' in text


def test_swagger_ui_and_openapi_document(client):
    assert b"swagger" in client.get("/").data.lower()
    spec = client.get("/swagger.json").get_json()
    for path in ("/model/metadata", "/model/{model_id}/metadata", "/model/{model_id}/labels",
                 "/model/leukocyte/predict", "/health/live", "/health/ready", "/metrics"):
        assert path in spec["paths"], path
    form = {p["name"] for p in spec["paths"]["/model/leukocyte/predict"]["post"]["parameters"]}
    assert {"image", "format", "scale"} <= form
