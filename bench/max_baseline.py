"""A MAX-style server, for comparison only: Flask's development server, one process, one ``model.predict``
call per request, no batching; preprocessing and postprocessing are this project's, so only serving differs.

``python -m bench.max_baseline --port 5001 --models leukocyte,metastasis``
"""
from __future__ import annotations

import argparse
import os
import threading

from flask import Flask, jsonify, request

from config import ROOT


def create_baseline(model_ids: list[str]) -> Flask:
    import keras

    from core.assets import read_spec
    from core.registry import model_class

    models, lock = {}, threading.Lock()
    for model_id in model_ids:
        model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
        model.configure(runtime="tensorflow", max_batch=1)
        model.load()
        # As MAX's wrappers do: Keras predict on every request, one at a time.
        network = keras.saving.load_model(model.spec.weights_path, compile=False)
        model._forward = lambda batch, network=network: network.predict(batch, verbose=0)
        models[model_id] = model
    app = Flask(__name__)

    @app.get("/health/ready")
    def ready():
        return jsonify(status="ok")

    @app.post("/model/<model_id>/predict")
    def predict(model_id: str):
        model = models[model_id]
        inputs = model.read_inputs({field: upload.read() for field, upload in request.files.items()}, 64_000_000)
        with lock:
            result = model.predict(inputs, {o.name: o.default for o in model.declared_options()})
        return jsonify(status="ok", **result)

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--models", default="leukocyte,metastasis")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    create_baseline(args.models.split(",")).run(host="127.0.0.1", port=args.port, threaded=True)
