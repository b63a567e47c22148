"""Serving from ONNX conversions kept in a cache: a fresh serving process never imports TensorFlow, answers as
the network does, and a cached file that was altered is converted again."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np

from config import ROOT
from core import onnx_cache
from core.assets import read_spec
from core.imageio import resize_bilinear
from core.registry import model_class
from tests.images import encode, smear

# A fresh interpreter loads the leukocyte model as the service does and answers one smear.
FRESH_PROCESS = """
import json, sys
from pathlib import Path
from config import ROOT
from core.assets import read_spec
from core.registry import model_class
from tests.images import encode, smear

model = model_class("leukocyte")(read_spec(ROOT / "assets" / "leukocyte"))
model.configure(max_batch=1, network_cache=Path(sys.argv[1]))
model.load()
answer = model.answer(model.read_inputs({"image": encode(smear())}, 10**7), {o.name: o.default for o in model.declared_options()})
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules, "runtime": model.runtime,
                  "probabilities": answer["predictions"][0]["probabilities"], "typical": answer["domain"]["typical"]}))
"""


def fresh_answer(cache) -> dict:
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(cache)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def loaded_leukocyte(cache):
    model = model_class("leukocyte")(read_spec(ROOT / "assets" / "leukocyte"))
    model.configure(max_batch=1, network_cache=cache)
    model.load()
    return model


def test_a_fresh_serving_process_never_imports_tensorflow_and_answers_as_the_network_does(tmp_path, app):
    first = fresh_answer(tmp_path)  # converts in a child process
    # one conversion and its record per network: the leukocyte network and its measure classifier
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".json", ".onnx", ".onnx"]
    again = fresh_answer(tmp_path)  # reads the cached conversion
    for answer in (first, again):
        assert answer["tensorflow_imported"] is False and answer["runtime"] == "onnx"
    reference = app.extensions["mmax_registry"].get("leukocyte")  # the test app's model
    expected = reference.answer(reference.read_inputs({"image": encode(smear())}, 10**7),
                                {o.name: o.default for o in reference.declared_options()})
    for label, probability in expected["predictions"][0]["probabilities"].items():
        assert abs(first["probabilities"][label] - probability) <= 1e-3
        assert again["probabilities"][label] == first["probabilities"][label]
    assert first["typical"] == expected["domain"]["typical"]


def test_an_altered_cached_file_is_converted_again(tmp_path):
    model = loaded_leukocyte(tmp_path)
    network = model.network_files()[None]
    path = tmp_path / f"{network.key}.onnx"
    altered = path.read_bytes()[:-100] + bytes(100)  # same size, different content
    path.write_bytes(altered)
    again = loaded_leukocyte(tmp_path)
    recorded = json.loads((tmp_path / f"{network.key}.json").read_text())["onnx_sha256"]
    assert path.read_bytes() != altered and hashlib.sha256(path.read_bytes()).hexdigest() == recorded
    batch = np.asarray(smear().resize((160, 160)), np.float32)[None]
    assert again.runtime == "onnx" and np.allclose(again.run_network(batch), model.run_network(batch), atol=1e-5)


def test_a_network_onnx_cannot_serve_runs_on_tensorflow_unless_onnx_is_required(tmp_path):
    model = model_class("leukocyte")(read_spec(ROOT / "assets" / "leukocyte"))
    network = model.network_files()[None]
    onnx_cache.convert(network, tmp_path)
    info_path = tmp_path / f"{network.key}.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "difference": 0.5}))  # as if its outputs differed
    served = onnx_cache.load(network, "auto", tmp_path)
    assert served.runtime == "tensorflow"
    try:
        onnx_cache.load(network, "onnx", tmp_path)
    except Exception as exc:  # noqa: BLE001 - the kind and message are what is checked
        assert "cannot be served by ONNX Runtime" in str(exc)
    else:
        raise AssertionError("runtime onnx served a graph whose outputs differ")


def test_bilinear_enlargement_matches_tensorflow():
    import keras

    batch = np.random.default_rng(0).uniform(0, 255, (3, 96, 96, 3)).astype(np.float32)
    expected = np.asarray(keras.ops.image.resize(batch, (144, 144), interpolation="bilinear", antialias=False))
    assert np.max(np.abs(resize_bilinear(batch, 144, 144) - expected)) < 0.01


def test_the_tensorflow_runtime_converts_nothing(tmp_path):
    model = model_class("leukocyte")(read_spec(ROOT / "assets" / "leukocyte"))
    model.configure(runtime="tensorflow", max_batch=1, network_cache=tmp_path)
    model.load()
    assert model.runtime == "tensorflow" and not any(tmp_path.iterdir())


def test_a_model_that_asks_for_every_core_gets_it_where_the_workers_divide_the_cores(tmp_path, monkeypatch):
    from core import runtime

    monkeypatch.setattr(runtime, "_threads", 1)  # this worker's share of the cores (gunicorn.conf.py)

    def threads_of_new_sessions(forward_threads) -> set[int]:
        before = set(runtime._sessions)
        model = model_class("leukocyte")(read_spec(ROOT / "assets" / "leukocyte"))
        model.configure(max_batch=1, network_cache=tmp_path, forward_threads=forward_threads)
        model.load()
        return {s.get_session_options().intra_op_num_threads for s in set(runtime._sessions) - before}

    assert threads_of_new_sessions(None) == {1}  # the worker's share
    assert threads_of_new_sessions(0) == {0}  # ONNX Runtime's default: every core
    assert threads_of_new_sessions(2) == {2}
