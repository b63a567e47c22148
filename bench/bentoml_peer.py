"""The same pipeline served by BentoML, for comparison only (``make bench`` starts it; never part of the product).

Laid out as BentoML advises for CPU pre-processing in front of a model: an API service with one worker per core
runs this project's decode, pre- and post-processing (the same model classes and model files as the service),
and sends each network call to a ``Networks`` service whose batchable endpoints group the rows of concurrent
requests by adaptive batching, as the service's micro-batcher does. Companion networks (the chromosome detector,
the mitosis subtype) run in the API worker, as they do in the service. Routes are the service's, so one load
client measures both: ``POST /model/<id>/predict`` with the same multipart fields.

Runs in its own environment (``bench/requirements-bentoml.txt``, made by ``bench.serving``):
``bentoml serve bench.bentoml_peer:MicroscopyPeer --port 5002`` with ``MMAX_MODELS`` naming the models.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import bentoml
import numpy as np

from config import ROOT

MODELS = os.environ.get("MMAX_MODELS", "leukocyte,protein,chromosome,metastasis,mitosis").split(",")
MAX_PIXELS = 64_000_000
ROWS = 64  # the service's largest forward pass (model_base.batch_size)


def load_model(model_id: str):
    from core.assets import read_spec
    from core.registry import model_class

    model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
    model.configure(runtime="auto", max_batch=1)  # batching is BentoML's here
    model.load()
    return model


def rows_forward(model_id: str) -> Callable[["Networks", np.ndarray], np.ndarray]:
    def forward(self: "Networks", rows: np.ndarray) -> np.ndarray:
        return self.forwards[model_id](np.ascontiguousarray(rows, dtype=np.float32))
    forward.__name__ = f"forward_{model_id}"
    return forward


@bentoml.service(workers=1)
class Networks:
    """Each model's network (with the domain check's embedding, as served), one batchable endpoint each."""

    def __init__(self) -> None:
        self.forwards = {model_id: load_model(model_id)._forward for model_id in MODELS}

    forward_leukocyte = bentoml.api(batchable=True, max_batch_size=ROWS, max_latency_ms=30_000)(
        rows_forward("leukocyte"))
    forward_protein = bentoml.api(batchable=True, max_batch_size=ROWS, max_latency_ms=30_000)(
        rows_forward("protein"))
    forward_chromosome = bentoml.api(batchable=True, max_batch_size=ROWS, max_latency_ms=30_000)(
        rows_forward("chromosome"))
    forward_metastasis = bentoml.api(batchable=True, max_batch_size=ROWS, max_latency_ms=30_000)(
        rows_forward("metastasis"))
    forward_mitosis = bentoml.api(batchable=True, max_batch_size=ROWS, max_latency_ms=30_000)(
        rows_forward("mitosis"))


@bentoml.service(workers=os.cpu_count() or 1)
class MicroscopyPeer:
    """Decode, pre- and post-processing of every model; network calls go to :class:`Networks`."""

    networks = bentoml.depends(Networks)

    def __init__(self) -> None:
        self.models = {}
        for model_id in MODELS:
            model = load_model(model_id)
            # the dependency's endpoints exist once the server has started it, so they are looked up per call
            model._forward = lambda rows, name=f"forward_{model_id}": np.asarray(self.networks.call(name, rows),
                                                                                 dtype=np.float32)
            self.models[model_id] = model

    def answer(self, model_id: str, files: dict[str, Path]) -> dict[str, Any]:
        model = self.models[model_id]
        inputs = model.read_inputs({field: path.read_bytes() for field, path in files.items()}, MAX_PIXELS)
        return {"status": "ok", **model.answer(inputs, {o.name: o.default for o in model.declared_options()})}

    @bentoml.api(route="/model/leukocyte/predict")
    def leukocyte(self, image: Path) -> dict:
        return self.answer("leukocyte", {"image": image})

    @bentoml.api(route="/model/chromosome/predict")
    def chromosome(self, image: Path) -> dict:
        return self.answer("chromosome", {"image": image})

    @bentoml.api(route="/model/metastasis/predict")
    def metastasis(self, image: Path) -> dict:
        return self.answer("metastasis", {"image": image})

    @bentoml.api(route="/model/mitosis/predict")
    def mitosis(self, image: Path) -> dict:
        return self.answer("mitosis", {"image": image})

    @bentoml.api(route="/model/protein/predict")
    def protein(self, red: Path, green: Path, blue: Path, yellow: Path) -> dict:
        return self.answer("protein", {"red": red, "green": green, "blue": blue, "yellow": yellow})
