"""The Open Inference Protocol (KServe v2 REST) beside the MAX routes, driven by an unmodified tritonclient."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from tests.images import encode, hpa_field, smear

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture()
def triton(live_server):
    with httpclient.InferenceServerClient(live_server.removeprefix("http://")) as client:
        yield client


def bytes_input(name: str, files: list[bytes], binary: bool):
    """A BYTES tensor of encoded files: raw in the binary extension, base64 strings in JSON."""
    tensor = httpclient.InferInput(name, [len(files)], "BYTES")
    elements = files if binary else [base64.b64encode(f).decode() for f in files]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def documents(result) -> list[dict]:
    return [json.loads(element) for element in result.as_numpy("predictions")]


def without_request_id(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "request_id"}


def test_server_and_model_metadata_and_health(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "microscopy-max" and "binary_tensor_data" in server["extensions"]
    meta = triton.get_model_metadata("protein")
    assert [i["name"] for i in meta["inputs"]] == ["red", "green", "blue", "yellow"]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "BYTES", "shape": [-1]}]
    version = triton.get_model_metadata("leukocyte")["versions"][0]
    assert triton.is_model_ready("leukocyte") and triton.is_model_ready("leukocyte", version)
    assert not triton.is_model_ready("leukocyte", "0.0.0-none")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_each_image_answers_what_predict_answers(triton, client, binary):
    """N images in, N JSON documents out, each the document /model/<id>/predict gives for that image."""
    files = [encode(smear(seed=1)), encode(smear(leukocytes=((100, 100, 28), (220, 150, 26)), seed=2))]
    outputs = [httpclient.InferRequestedOutput("predictions", binary_data=binary)]
    result = triton.infer("leukocyte", [bytes_input("image", files, binary)], outputs=outputs,
                          parameters={"sample_id": "LIMS-0042"})
    answers = documents(result)
    assert len(answers) == 2
    for file, answer in zip(files, answers):
        direct = client.post("/model/leukocyte/predict", data={"image": (io.BytesIO(file), "s.png"),
                                                               "sample_id": "LIMS-0042"},
                             content_type="multipart/form-data").get_json()
        assert without_request_id(answer) == without_request_id(direct)
        assert answer["sample_id"] == "LIMS-0042" and answer["model"] == "leukocyte"
    assert result.get_response()["model_version"] == answers[0]["version"]


def test_options_are_request_parameters(triton):
    image = [encode(smear(seed=3))]
    strict = documents(triton.infer("leukocyte", [bytes_input("image", image, True)],
                                    parameters={"min_confidence": 1.0}))[0]
    loose = documents(triton.infer("leukocyte", [bytes_input("image", image, True)],
                                   parameters={"min_confidence": 0.0}))[0]
    assert len(loose["predictions"]) >= 1 and not any(cell["uncertain"] for cell in loose["predictions"])
    assert any(cell["uncertain"] for cell in strict["predictions"])  # below 1.0: uncertain
    with pytest.raises(InferenceServerException) as bad:
        triton.infer("leukocyte", [bytes_input("image", image, True)], parameters={"min_confidence": 7})
    assert bad.value.status() == "400" and "min_confidence" in bad.value.message()


def test_a_four_channel_model_takes_one_tensor_per_channel(triton, client):
    field = hpa_field()
    inputs = [bytes_input(name, [encode(field[name])], True) for name in ("red", "green", "blue", "yellow")]
    answer = documents(triton.infer("protein", inputs))[0]
    direct = client.post("/model/protein/predict", content_type="multipart/form-data",
                         data={name: (io.BytesIO(encode(field[name])), f"{name}.png") for name in field}).get_json()
    assert without_request_id(answer) == without_request_id(direct) and answer["cell_count"] >= 1


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": []}, 400, "inputs"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "BYTES"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, 400, "base64"),
    ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["AAAA"]}]}, 400, "shape"),
    ({"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}, 400, "image"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}, 415, "image"),
])
def test_bad_requests_are_json_errors(live_server, body, status, message):
    response = requests.post(f"{live_server}/v2/models/leukocyte/infer", json=body, timeout=30)
    assert response.status_code == status and message in response.json()["error"]


def test_unknown_models_versions_and_broken_binary_framing_are_errors(live_server):
    assert requests.get(f"{live_server}/v2/models/nope", timeout=30).status_code == 404
    assert requests.get(f"{live_server}/v2/models/leukocyte/versions/9.9/ready", timeout=30).status_code == 404
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 100}}]}).encode()
    response = requests.post(f"{live_server}/v2/models/leukocyte/infer", data=header + b"\x05\x00\x00\x00ab",
                             headers={"Inference-Header-Content-Length": str(len(header))}, timeout=30)
    assert response.status_code == 400 and "binary" in response.json()["error"]
    assert requests.get(f"{live_server}/health/live", timeout=30).status_code == 200  # still serving
