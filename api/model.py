"""``/model``: metadata, labels and prediction, generic over the model registry.

The namespace is built per app from its registry: every served model gets its own documented predict operation
(its fields, typed options, defaults, ranges and answer schema, from model.json); the generic route
``/model/<id>/predict`` serves the same calls without a form of its own.
"""
from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

from flask import current_app, request, send_file
from flask_restx import Namespace, Resource

from api import schemas
from api.forms import form_and_files, take_sample_id
from api.gunicorn_worker import RECEIVED_AT
from api.metrics import observe_inference
from api.tracing import request_id
from core import deadline
from core.errors import ClientError, ImageTooLarge
from core.imageio import encode_png
from core.model_base import FORMAT_HELP, MicroscopyModel
from core.options import parse_options
from core.registry import ModelRegistry
from core.wsi.slide_model import SlideModel


def predict_form(ns: Namespace, model: MicroscopyModel):
    """The Swagger form of one model: its file fields and exactly its options, typed, with defaults and ranges."""
    files = [("image", not model.channel_fields, f"the image to analyse: {model.input.accepts}")]
    files += [(name, False, f"the {name} channel, instead of one multi-channel 'image'") for name in model.channel_fields]
    return schemas.form(ns, files, model.declared_options())


def predict(registry: ModelRegistry, model_id: str):
    """One predict call, for the generic and the per-model routes alike."""
    model = registry.get(model_id)
    given, files = form_and_files()
    sample_id = take_sample_id(given)
    options = parse_options(model.declared_options(), given, ignore=set(files))
    readable = ("image", *model.channel_fields)
    unexpected = sorted(set(files) - set(readable))
    if unexpected:  # a file the model would not read is the client's mistake, not silently ignored
        raise ClientError(f"unexpected file field(s) {', '.join(map(repr, unexpected))[:200]}; this model "
                          f"reads {', '.join(map(repr, readable))}")
    model, inputs, result = analyse(registry, model_id, {name: storage.read() for name, storage in files.items()},
                                    options)
    if options.get("format") == "png":
        png = encode_png(model.render(inputs, result))
        return send_file(io.BytesIO(png), mimetype="image/png", download_name=f"{model_id}.png")
    if options.get("format") == "geojson":
        return current_app.response_class(json.dumps(model.to_geojson(result)), mimetype="application/geo+json")
    if options.get("format") == "json_with_png":  # one analysis, every form of its answer (the lab page)
        result = {**result, "overlay_png": "data:image/png;base64," + base64.b64encode(
            encode_png(model.render(inputs, result))).decode("ascii")}
        if "geojson" in model.formats:
            result["geojson"] = model.to_geojson(result)
    return answer_document(model, inputs, result, sample_id)


def time_left(budget_s: float) -> float:
    """The request's time budget less what it waited for a thread since it arrived (api/gunicorn_worker.py);
    a request that has already spent it is answered 503 at once rather than worked on."""
    if not budget_s:
        return 0  # no budget
    waited = time.monotonic() - request.environ.get(RECEIVED_AT, time.monotonic())
    if waited >= budget_s:
        raise deadline.OverBudget(f"the request waited {waited:.0f} s for a free thread, past its {budget_s:g} s "
                                  f"(setting MMAX_REQUEST_TIMEOUT_S): the server is busy, retry later")
    return budget_s - waited


def analyse(registry: ModelRegistry, model_id: str, uploads: dict[str, bytes], options: dict[str, Any]
            ) -> tuple[MicroscopyModel, Any, dict[str, Any]]:
    """(model, decoded inputs, result) of one analysis: admitted, within the request's time budget, the pixel
    limit and the memory budget (core.memory), on the shared batcher. Every protocol's predict call runs through here."""
    model = registry.get_ready(model_id)
    config = current_app.config["MMAX"]
    with current_app.extensions["mmax_admission"].admit(model_id), model.serving(), \
            deadline.budget(time_left(config.request_timeout_s)):
        limit = config.max_image_pixels
        inputs = model.read_inputs(uploads, limit)
        working = model.working_pixels(inputs, options)
        if working > limit:  # only a resize option takes a decoded upload past the limit
            raise ImageTooLarge(f"with scale={options.get('scale', 1.0):g} the image becomes {working:,} pixels; the "
                                f"limit is {limit:,}")
        with current_app.extensions["mmax_memory"].reserve(model.memory_need(working),
                                                           f"this {working:,}-pixel image"):
            started = time.perf_counter()
            result = model.answer(inputs, options)
            observe_inference(model_id, time.perf_counter() - started)
    return model, inputs, result


def answer_document(model: MicroscopyModel, inputs: Any, result: dict[str, Any], sample_id: str | None
                    ) -> dict[str, Any]:
    """The JSON answer: who answered (model, version, weights, request), the upload's size, the result."""
    body = {"status": "ok", "model": model.spec.id, "version": model.spec.version,
            "weights_sha256": model.spec.meta["weights"].get("sha256"), "request_id": request_id()}
    if sample_id is not None:
        body["sample_id"] = sample_id
    size = getattr(inputs, "size", None)
    if size is not None:
        body["image"] = {"width": size[0], "height": size[1]}
        orientation = getattr(inputs, "info", {}).get("exif_orientation")
        if orientation:  # the upload was turned upright first; boxes are in the upright frame
            body["image"]["exif_orientation"] = orientation
    return {**body, **result}


MIMETYPES = {"json": "application/json", "png": "image/png", "geojson": "application/geo+json"}


def add_model_routes(ns: Namespace, registry: ModelRegistry, model_id: str) -> None:
    """``POST /model/<id>/predict`` for one model: its own form, answer schema and operationId."""
    model = registry.models[model_id]
    form = predict_form(ns, model)
    prediction, answer = schemas.answer(model)
    for schema in (prediction, answer):
        ns.add_model(schema.name, schema)
    formats = next((option.choices for option in model.declared_options() if option.name == "format"), ("json",))
    others = "".join(f"; with format={name}: {FORMAT_HELP[name]}" for name in formats[1:])

    class PredictOne(Resource):
        @ns.doc(id=f"predict_{model_id}", description=model.spec.meta.get("description", ""))
        @ns.expect(form)
        @ns.produces(sorted({MIMETYPES.get(name, "application/json") for name in formats} | {"application/json"}))
        @ns.response(200, f"the answer (JSON){others}", answer)
        @ns.response(400, "bad option or missing field", schemas.error)
        @ns.response(401, "API key missing or wrong", schemas.error)
        @ns.response(413, "upload or image too large", schemas.error)
        @ns.response(415, "not a supported image, or undecodable", schemas.error)
        @ns.response(503, "model still loading, MMAX_QUEUE_MAX requests already in progress (see Retry-After), or "
                          "the request over its MMAX_REQUEST_TIMEOUT_S", schemas.error)
        def post(self, model_id: str):
            return predict(registry, model_id)

    PredictOne.post.__doc__ = f"{model.spec.name} ({model_id})"
    # ``defaults`` hands the id to the view as the generic route's URL would (metrics label requests by it)
    ns.add_resource(PredictOne, f"/{model_id}/predict", endpoint=f"predict_{model_id}", defaults={"model_id": model_id})


def create_namespace(registry: ModelRegistry) -> Namespace:
    ns = Namespace("model", description="Model metadata, labels and predictions")
    for schema in schemas.ALL:
        ns.add_model(schema.name, schema)

    def describe(model_id: str) -> dict[str, Any]:
        model = registry.get(model_id)
        meta = model.spec.public_metadata()
        meta["options"] = [option.describe() for option in model.declared_options()]
        meta["files"] = ["image", *model.channel_fields]  # the multipart file fields /predict reads
        meta["whole_slides"] = isinstance(model, SlideModel)  # POST /model/<id>/jobs takes slides
        meta["status"] = registry.state[model_id]
        meta["runtime"] = model.runtime
        return meta

    @ns.route("/metadata")
    class MetadataList(Resource):
        @ns.response(200, "every served model", schemas.metadata_list)
        def get(self):
            """Metadata of every served model."""
            return {"models": [describe(model_id) for model_id in registry.models]}

    @ns.route("/<string:model_id>/metadata")
    @ns.param("model_id", "a model id from /model/metadata, e.g. leukocyte")
    class Metadata(Resource):
        @ns.response(200, "the model", schemas.metadata)
        @ns.response(404, "unknown model", schemas.error)
        def get(self, model_id: str):
            """One model: what it does, what it accepts, its labels, measured metrics and training data."""
            return describe(model_id)

    @ns.route("/<string:model_id>/labels")
    @ns.param("model_id", "a model id from /model/metadata")
    class Labels(Resource):
        @ns.response(200, "the model's labels", schemas.labels)
        @ns.response(404, "unknown model", schemas.error)
        def get(self, model_id: str):
            """The labels a model predicts."""
            labels = registry.get(model_id).spec.labels
            return {"count": len(labels), "labels": labels}

    @ns.route("/<string:model_id>/predict")
    @ns.hide  # each model documents its own route (below); this one serves clients that build the URL
    class Predict(Resource):
        def post(self, model_id: str):
            """Run a model on an uploaded image (multipart field 'image'; options as form or query fields)."""
            return predict(registry, model_id)

    for model_id in registry.models:
        add_model_routes(ns, registry, model_id)
    return ns
