"""Every client mistake gets a 4xx JSON error that says what was wrong, and the server keeps serving."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TEST_CONFIG, config_with, make_app
from tests.images import encode, smear

GOOD = encode(smear())
PNG = encode(smear(), "PNG")
JPEG = encode(smear(), "JPEG")


def post(client, model="leukocyte", files=None, query="", **form):
    files = {"image": GOOD} if files is None else files
    data = {name: (io.BytesIO(content), f"{name}.bin") for name, content in files.items()}
    data.update(form)
    return client.post(f"/model/{model}/predict{query}", data=data, content_type="multipart/form-data")


def huge_png() -> bytes:
    """2,100 x 2,000 pixels (over the 4-megapixel test limit) in a few kilobytes: a decompression bomb in small."""
    return encode(Image.new("L", (2100, 2000)))


CASES = {
    "random bytes": (dict(files={"image": np.random.default_rng(0).bytes(5000)}), 415, "not an image"),
    "zero bytes": (dict(files={"image": b""}), 400, "empty"),
    "truncated png": (dict(files={"image": PNG[: len(PNG) // 2]}), 415, "truncated"),
    "truncated jpeg": (dict(files={"image": JPEG[: len(JPEG) // 2]}), 415, "truncated"),
    "over the pixel limit": (dict(files={"image": huge_png()}), 413, "pixels"),
    "over the byte limit": (dict(files={"image": os.urandom(TEST_CONFIG.max_upload_bytes + 1000)}), 413, "bytes"),
    "missing image field": (dict(files={"file": GOOD}), 400, "'image'"),
    "no file at all": (dict(files={}), 400, "'image'"),
    "unknown model": (dict(model="nope"), 404, "unknown model 'nope'"),
    "bad option value": (dict(format="gif"), 400, "format"),
    "option out of range": (dict(scale="40"), 400, "scale"),
    "option not a number": (dict(scale="big"), 400, "scale"),
    "option nan": (dict(scale="nan"), 400, "scale"),
    "unknown option": (dict(threshold="0.5"), 400, "unknown option"),
    "bad query option": (dict(query="?format=jpg"), 400, "format"),
    "option given twice": (dict(query="?scale=1.0", scale="2.0"), 400, "field 'scale' is given 2 times"),
    "boolean not spelt true or false": (dict(model="protein", files={}, drop_border_cells="1"), 400, "true or false"),
}


@pytest.mark.parametrize("case", CASES)
def test_client_mistake_gets_json_error_and_server_keeps_serving(client, case):
    kwargs, status, words = CASES[case]
    response = post(client, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "error" and words in body["message"]
    assert post(client).status_code == 200  # still serving normally


def test_a_multipart_part_without_a_name_is_a_400(client):
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; filename=\"a.png\"\r\n\r\n").encode() + GOOD + \
        f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/model/leukocyte/predict", data=body,
                           content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 400 and response.get_json()["status"] == "error", response.get_data(as_text=True)


def test_unknown_routes_and_methods_answer_json(client):
    for response, status in ((client.get("/nowhere"), 404), (client.get("/model/leukocyte/predict"), 405),
                             (client.get("/model/nope/metadata"), 404), (client.get("/model/nope/labels"), 404)):
        assert response.status_code == status
        assert response.get_json()["status"] == "error"


def test_api_key_when_configured():
    app = make_app(config_with(api_key="s3cret"))
    client = app.test_client()
    missing, wrong = post(client), client.post(
        "/model/leukocyte/predict", headers={"X-API-Key": "guess"},
        data={"image": (io.BytesIO(GOOD), "a.png")}, content_type="multipart/form-data")
    assert missing.status_code == 401 and "missing" in missing.get_json()["message"]
    assert wrong.status_code == 401 and "wrong" in wrong.get_json()["message"]
    right = client.post("/model/leukocyte/predict", headers={"X-API-Key": "s3cret"},
                        data={"image": (io.BytesIO(GOOD), "a.png")}, content_type="multipart/form-data")
    assert right.status_code == 200
    assert client.get("/health/ready").status_code == 200  # probes stay open for orchestrators
    assert client.get("/swagger.json").status_code == 200 and client.get("/").status_code == 200  # the docs too
    for closed in ("/model/metadata", "/model/leukocyte/labels", "/metrics", "/jobs", "/jobs/" + "0" * 32):
        assert client.get(closed).status_code == 401, closed
        assert client.get(closed, headers={"X-API-Key": "s3cret"}).status_code in {200, 404}, closed
