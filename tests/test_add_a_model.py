"""README's "To add a model", followed to the letter: a toy model gets its code, its model.json, weights from the
shared training command, and every route of the service."""
from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.models
from core.errors import AssetError
from core.training.__main__ import main as train_main
from tests.conftest import config_with, make_app
from tests.images import encode

MODEL_CODE = '''
from dataclasses import dataclass

import numpy as np

from core.imageio import to_rgb8
from core.input_spec import InputSpec
from core.model_base import MicroscopyModel
from core.options import Option


@dataclass(frozen=True)
class ToyInput(InputSpec):
    window_px: int


class ToyModel(MicroscopyModel):
    Input = ToyInput
    formats = ("json",)
    options = (Option("gain", float, "multiplies the pixels", minimum=0.0, maximum=4.0),)

    def network_input(self, image):
        side = self.input.window_px
        return to_rgb8(image.resize((side, side)))

    def preprocess(self, inputs, options):
        return (self.network_input(inputs) * options["gain"]).clip(0, 255)[None].astype(np.float32), None

    def postprocess(self, probabilities, context, options):
        names = self.spec.label_names
        best = int(np.argmax(probabilities[0]))
        return {"predictions": [{"label": names[best], "probability": round(float(probabilities[0, best]), 4)}]}


MODEL_CLASS = ToyModel
'''

RECIPE_CODE = '''
from core.training.recipe import Example, TrainingRecipe


class ToyTraining(TrainingRecipe):
    def files(self, data_dir):
        return [Example(path, label, path.stem) for label, name in enumerate(self.model.spec.label_names)
                for path in sorted((data_dir / name).glob("*.png"))]

    def network_input(self, image):
        return self.model.network_input(image)


RECIPE = ToyTraining
'''

MODEL_JSON = {
    "id": "toy", "name": "Toy brightness", "description": "dark or bright", "type": "classification",
    "source": "tests", "license": "MIT", "version": "0.1",
    "input": {"accepts": "any image", "resolution": "any", "window_px": 32, "network_input": [32, 32, 3]},
    "labels": [{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}],
    "defaults": {"gain": 1.0},
    "output": {"prediction": {"label": {"type": "string", "description": "dark or bright"},
                              "probability": {"type": "number", "description": "its probability"}},
               "answer": {}},
    "weights": {"file": "toy.keras"},
}


@pytest.fixture()
def toy_code(tmp_path: Path, monkeypatch):
    """``core/models/toy.py`` and ``core/models/toy_training.py``, written where core.models finds them."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "toy.py").write_text(textwrap.dedent(MODEL_CODE))
    (code / "toy_training.py").write_text(textwrap.dedent(RECIPE_CODE))
    monkeypatch.setattr(core.models, "__path__", [*core.models.__path__, str(code)])
    yield
    for name in ("core.models.toy", "core.models.toy_training"):
        sys.modules.pop(name, None)


def write_model_json(assets: Path, **changes) -> Path:
    folder = assets / "toy"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps({**MODEL_JSON, **changes}))
    return folder


def test_a_new_model_trains_with_the_shared_command_and_serves(tmp_path: Path, toy_code):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name, low in (("dark", 0), ("bright", 180)):
        (data / name).mkdir(parents=True)
        for k in range(8):
            pixels = rng.integers(low, low + 70, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / name / f"{name}{k}.png")
    assets = tmp_path / "assets"
    write_model_json(assets)
    train_main(["toy", "--data", str(data), "--assets", str(assets), "--weights", "none", "--epochs", "2",
                "--batch-size", "4", "--no-tta", "--cache-dir", str(tmp_path / "cache")])
    meta = json.loads((assets / "toy" / "model.json").read_text())
    assert len(meta["weights"]["sha256"]) == 64 and meta["metrics"]["test"]["examples"] >= 2

    client = make_app(config_with(assets_dir=assets)).test_client()
    served = client.get("/model/toy/metadata").get_json()
    assert served["options"] == [{"name": "gain", "type": "float", "default": 1.0, "help": "multiplies the pixels",
                                  "range": [0.0, 4.0]}]  # json only: no format option
    image = encode(Image.new("RGB", (50, 30), (250, 250, 250)))
    response = client.post("/model/toy/predict", data={"image": (io.BytesIO(image), "a.png"), "gain": "0.5"},
                           content_type="multipart/form-data")
    body = response.get_json()
    assert response.status_code == 200 and body["model"] == "toy" and body["image"] == {"width": 50, "height": 30}
    assert body["predictions"][0]["label"] in {"dark", "bright"}
    assert client.post("/model/toy/predict", data={"image": (io.BytesIO(image), "a.png"), "format": "png"},
                       content_type="multipart/form-data").status_code == 400
    form = client.get("/swagger.json").get_json()["paths"]["/model/toy/predict"]["post"]["parameters"]
    assert [(p["name"], p["type"]) for p in form] == [("image", "file"), ("sample_id", "string"), ("gain", "number")]


@pytest.mark.parametrize("changes, words", [
    ({"input": {**MODEL_JSON["input"], "patch_px": 96}}, "unknown key(s) patch_px"),
    ({"input": {"accepts": "any", "resolution": "any", "network_input": [32, 32, 3]}}, "missing key(s) window_px"),
    ({"input": {**MODEL_JSON["input"], "window_px": "32"}}, "'window_px' must be int"),
    ({"defaults": {}}, "missing: gain"),
    ({"defaults": {"gain": 9.0}}, "between 0.0 and 4.0"),
    ({"output": {"prediction": {"label": {"type": "text", "description": "x"}}, "answer": {}}}, "needs a type"),
])
def test_a_model_json_that_does_not_fit_the_code_stops_start_up_naming_the_file(tmp_path, toy_code, changes, words):
    from core.registry import ModelRegistry

    folder = write_model_json(tmp_path / "assets", **changes)
    (folder / "toy.keras").write_bytes(b"x")
    spec = json.loads((folder / "model.json").read_text())
    spec["weights"]["sha256"] = __import__("hashlib").sha256(b"x").hexdigest()
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(AssetError) as error:
        ModelRegistry(tmp_path / "assets")
    assert words in str(error.value) and str(folder / "model.json") in str(error.value)
