"""``/model``: metadata, labels and prediction, generic over the model registry.

The namespace is built per app from its registry, so the Swagger form lists every served model's options.
"""
from __future__ import annotations

import io
import json
import time
from typing import Any

from flask import current_app, request, send_file
from flask_restx import Namespace, Resource
from werkzeug.datastructures import FileStorage

from api import schemas
from api.metrics import observe_inference
from core.errors import ClientError
from core.imageio import encode_png
from core.options import parse_options
from core.registry import ModelRegistry


def _predict_parser(ns: Namespace, registry: ModelRegistry):
    """The Swagger form: the image plus every option of every served model (each says which models use it)."""
    parser = ns.parser()
    parser.add_argument("image", location="files", type=FileStorage, required=False,
                        help="the image to analyse (PNG, JPEG, TIFF, BMP, WEBP); every model takes it")
    extra_files = {name: model_id for model_id, model in registry.models.items()
                   for name in model.channel_fields}
    for name, model_id in extra_files.items():
        parser.add_argument(name, location="files", type=FileStorage, required=False,
                            help=f"({model_id}) the {name} channel, instead of one multi-channel 'image'")
    users: dict[str, list[str]] = {}
    options, choices = {}, {}
    for model_id, model in registry.models.items():
        for option in model.declared_options():
            users.setdefault(option.name, []).append(model_id)
            options.setdefault(option.name, option)
            if option.choices:  # e.g. format: the union of what the models offer
                known = choices.setdefault(option.name, [])
                known.extend(c for c in option.choices if c not in known)
    for name, option in options.items():
        parser.add_argument(name, location="form", required=False, type=str, choices=choices.get(name),
                            default=option.default, help=f"({', '.join(users[name])}) {option.help}")
    return parser


def create_namespace(registry: ModelRegistry) -> Namespace:
    ns = Namespace("model", description="Model metadata, labels and predictions")
    for schema in schemas.ALL:
        ns.add_model(schema.name, schema)
    predict_form = _predict_parser(ns, registry)

    def describe(model_id: str) -> dict[str, Any]:
        model = registry.get(model_id)
        meta = model.spec.public_metadata()
        meta["options"] = [option.describe() for option in model.declared_options()]
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
    @ns.param("model_id", "a model id from /model/metadata")
    class Predict(Resource):

        @ns.expect(predict_form)
        @ns.produces(["application/json", "image/png", "application/geo+json"])
        @ns.response(200, "predictions (JSON), or the image with them drawn (format=png)",
                     schemas.prediction_response)
        @ns.response(400, "bad option or missing field", schemas.error)
        @ns.response(401, "API key missing or wrong", schemas.error)
        @ns.response(404, "unknown model", schemas.error)
        @ns.response(413, "upload or image too large", schemas.error)
        @ns.response(415, "not a supported image, or undecodable", schemas.error)
        @ns.response(503, "model still loading", schemas.error)
        def post(self, model_id: str):
            """Run a model on an uploaded image (multipart field 'image'; options as form or query fields)."""
            model = registry.get(model_id)
            given = {key: request.values[key] for key in request.values}
            options = parse_options(model.declared_options(), given, ignore=set(request.files))
            readable = ("image", *model.channel_fields)
            unexpected = sorted(set(request.files) - set(readable))
            if unexpected:  # a file the model would not read is the client's mistake, not silently ignored
                raise ClientError(f"unexpected file field(s) {', '.join(map(repr, unexpected))[:200]}; this model "
                                  f"reads {', '.join(map(repr, readable))}")
            uploads = {name: storage.read() for name, storage in request.files.items()}
            model = registry.get_ready(model_id)
            with model.serving():
                inputs = model.read_inputs(uploads, current_app.config["MMAX"].max_image_pixels)
                started = time.perf_counter()
                result = model.predict(inputs, options)
                observe_inference(model_id, time.perf_counter() - started)
            if options.get("format") == "png":
                png = encode_png(model.render(inputs, result))
                return send_file(io.BytesIO(png), mimetype="image/png", download_name=f"{model_id}.png")
            if options.get("format") == "geojson":
                return current_app.response_class(json.dumps(model.to_geojson(result)),
                                                  mimetype="application/geo+json")
            size = getattr(inputs, "size", None)
            body = {"status": "ok", "model": model_id, "version": model.spec.version}
            if size is not None:
                body["image"] = {"width": size[0], "height": size[1]}
            return {**body, **result}

    return ns
