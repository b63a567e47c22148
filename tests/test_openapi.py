"""The OpenAPI document: one operation per model with exactly its fields, typed, and answers as it declares them."""
from __future__ import annotations

import collections
import io
import json

import pytest
from PIL import Image

from config import ROOT
from tests.images import encode, hpa_field, section, smear, spread

MODELS = ("chromosome", "leukocyte", "metastasis", "mitosis", "protein")
SWAGGER_TYPES = {bool: "boolean", float: "number", int: "integer", str: "string"}


def sample_files(model_id: str) -> dict[str, bytes]:
    """What a user would pick in "Try it out" for each model (made here)."""
    if model_id == "protein":
        return {name: encode(image) for name, image in hpa_field().items()}
    image = {"leukocyte": lambda: smear(),
             "chromosome": lambda: spread(rods=((100, 100, 40, 30), (300, 200, 50, 80))),
             "metastasis": lambda: Image.fromarray(section((96, 96))),
             "mitosis": lambda: Image.fromarray(section((256, 256)))}[model_id]()
    return {"image": encode(image)}


@pytest.fixture(scope="module")
def spec(app):
    return app.test_client().get("/swagger.json").get_json()


def operation(spec, path: str) -> dict:
    return spec["paths"][path]["post"]


def test_operation_ids_are_unique(spec):
    ids = collections.Counter(op["operationId"] for item in spec["paths"].values() for op in item.values()
                              if isinstance(op, dict) and "operationId" in op)
    assert ids and max(ids.values()) == 1, [name for name, count in ids.items() if count > 1]


@pytest.mark.parametrize("model_id", MODELS)
def test_each_model_has_its_own_form_with_exactly_its_options_typed(client, spec, model_id):
    meta = client.get(f"/model/{model_id}/metadata").get_json()
    parameters = {p["name"]: p for p in operation(spec, f"/model/{model_id}/predict")["parameters"]}
    files = {name for name, p in parameters.items() if p["type"] == "file"}
    assert files == ({"image", "red", "green", "blue", "yellow"} if model_id == "protein" else {"image"})
    options = {name: p for name, p in parameters.items() if p["type"] != "file" and name != "sample_id"}
    assert set(options) == {option["name"] for option in meta["options"]}
    for option in meta["options"]:
        documented = options[option["name"]]
        assert documented["default"] == option["default"] and documented["in"] == "formData"
        assert documented["type"] == SWAGGER_TYPES[{"bool": bool, "float": float, "int": int, "str": str}[option["type"]]]
        if "choices" in option:
            assert documented["enum"] == option["choices"]
        if "range" in option:
            assert [documented.get("minimum"), documented.get("maximum")] == option["range"]
    assert operation(spec, f"/model/{model_id}/predict")["responses"]["200"]["schema"]["$ref"].endswith(
        f"{model_id.capitalize()}Answer")


def test_the_mitosis_form_says_what_the_mitosis_model_uses(spec):
    threshold = next(p for p in operation(spec, "/model/mitosis/predict")["parameters"] if p["name"] == "threshold")
    shipped = json.loads((ROOT / "assets" / "mitosis" / "model.json").read_text())["defaults"]["threshold"]
    assert threshold["default"] == shipped and "mitosis" in threshold["description"]
    assert "geojson" not in next(p for p in operation(spec, "/model/leukocyte/predict")["parameters"]
                                 if p["name"] == "format")["enum"]


@pytest.mark.parametrize("model_id", MODELS)
def test_try_it_out_with_the_prefilled_defaults_answers_200(client, spec, model_id):
    """As Swagger UI sends the form: every parameter with a default, as text, and the chosen files."""
    form = {}
    for parameter in operation(spec, f"/model/{model_id}/predict")["parameters"]:
        if "default" in parameter:
            value = parameter["default"]
            form[parameter["name"]] = str(value).lower() if isinstance(value, bool) else str(value)
    form.update({name: (io.BytesIO(data), f"{name}.png") for name, data in sample_files(model_id).items()})
    response = client.post(f"/model/{model_id}/predict", data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()


def test_slide_models_have_their_own_job_forms(spec):
    for model_id in ("metastasis", "mitosis"):
        names = {p["name"] for p in operation(spec, f"/model/{model_id}/jobs")["parameters"]}
        assert {"slide", "slide_path", "mpp", "threshold"} <= names and "format" not in names
    assert "tissue_only" in {p["name"] for p in operation(spec, "/model/metastasis/jobs")["parameters"]}
    assert "/model/leukocyte/jobs" not in spec["paths"]


def test_the_generic_routes_still_serve_clients_that_build_the_url(client):
    response = client.post("/model/nope/predict", data={"image": (io.BytesIO(encode(smear())), "a.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 404 and "available" in response.get_json()["message"]


@pytest.mark.parametrize("model_id, files", [
    ("leukocyte", {"image": encode(smear())}),
    ("chromosome", {"image": encode(spread(rods=((100, 100, 40, 30), (300, 200, 50, 80))))}),
    ("metastasis", {"image": encode(Image.fromarray(section((96, 96))))}),
    ("metastasis", {"image": encode(Image.fromarray(section((512, 512))))}),  # a region: grid and regions
    ("mitosis", {"image": encode(Image.fromarray(section((256, 256))))}),
    ("protein", {name: encode(image) for name, image in hpa_field().items()}),
])
def test_answers_are_what_model_json_declares(client, app, model_id, files):
    from core.output_spec import OutputSpec

    body = client.post(f"/model/{model_id}/predict",
                       data={name: (io.BytesIO(data), f"{name}.png") for name, data in files.items()},
                       content_type="multipart/form-data").get_json()
    meta = client.get(f"/model/{model_id}/metadata").get_json()
    declared = OutputSpec.from_json(meta["output"], app.config["MMAX"].assets_dir / model_id / "model.json")
    # the service's part of every answer (the domain check is documented once, as the schema Domain)
    envelope = ("status", "model", "version", "weights_sha256", "request_id", "image", "domain")
    assert set(body["domain"]) <= set(client.get("/swagger.json").get_json()["definitions"]["Domain"]["properties"])
    answer = {key: value for key, value in body.items() if key not in envelope}
    assert declared.mismatches(answer) == []
    assert set(declared.answer) >= set(answer) - {"predictions"}


def test_a_declaration_that_does_not_fit_is_caught():
    from pathlib import Path

    from core.errors import AssetError
    from core.output_spec import OutputSpec

    declared = OutputSpec.from_json({"prediction": {"x": {"type": "integer", "description": "column"}},
                                     "answer": {"count": {"type": "integer", "description": "figures"}}},
                                    Path("model.json"))
    assert declared.mismatches({"predictions": [{"x": 3}], "count": 1}) == []
    assert declared.mismatches({"predictions": [{"x": 2.5, "y": 1}], "count": True}) == [
        "answer field 'count' is not integer: True", "prediction field 'x' is not integer: 2.5",
        "undeclared prediction field 'y'"]
    with pytest.raises(AssetError, match="needs a type"):
        OutputSpec.from_json({"prediction": {"x": {"type": "int"}}, "answer": {}}, Path("model.json"))
