"""Response schemas for the OpenAPI document, kept apart from the routes that use them."""
from __future__ import annotations

from flask_restx import Model, fields, reqparse
from werkzeug.datastructures import FileStorage

from api.forms import SAMPLE_ID, SAMPLE_ID_HELP


class AnyValue(fields.Raw):
    """A value of any JSON type (flask-restx's Raw documents itself as an object)."""

    __schema_type__ = None


class RangedArgument(reqparse.Argument):
    """A form argument whose OpenAPI parameter carries ``minimum`` and ``maximum``."""

    def __init__(self, *args, minimum: float | None = None, maximum: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.minimum, self.maximum = minimum, maximum

    @property
    def __schema__(self):
        schema = super().__schema__
        if schema is not None:
            schema.update({key: value for key, value in (("minimum", self.minimum), ("maximum", self.maximum))
                           if value is not None})
        return schema


def _nullable(field_class: type) -> type:
    """``field_class`` whose schema admits null (OpenAPI 2's ``x-nullable``): null means "not applicable"."""
    def schema(self) -> dict:
        return {**field_class.schema(self), "x-nullable": True}
    return type(f"Nullable{field_class.__name__}", (field_class,), {"schema": schema})


def form(ns, files: list[tuple[str, bool, str]], options) -> "reqparse.RequestParser":
    """A Swagger form: file fields (name, required, help) and then ``options`` (core.options.Option), each typed
    with its default, choices and range."""
    parser = ns.parser()
    parser.argument_class = RangedArgument
    for name, required, help_text in files:
        parser.add_argument(name, location="files", type=FileStorage, required=required, help=help_text)
    parser.add_argument(SAMPLE_ID, location="form", required=False, type=str, help=SAMPLE_ID_HELP)
    for option in options:
        parser.add_argument(option.name, location="form", required=False, type=option.type,
                            choices=list(option.choices) if option.choices else None, default=option.default,
                            help=option.help, minimum=option.minimum, maximum=option.maximum)
    return parser


FIELD_TYPES = {"string": fields.String, "number": fields.Float, "integer": fields.Integer,
               "boolean": fields.Boolean, "object": fields.Raw}
NULLABLE = {name: _nullable(field_class) for name, field_class in FIELD_TYPES.items()}


def _field(declared) -> fields.Raw:
    """A response field from model.json's ``output`` declaration (core.output_spec.Field)."""
    return _typed(declared.type, declared.description)


def _typed(type_name: str, description: str | None = None) -> fields.Raw:
    """The field of a declared type; ``T[]`` a list of T, ``T[][]`` a list of lists."""
    if type_name.endswith("[]"):
        return _nullable(fields.List)(_typed(type_name[:-2]), description=description)
    return NULLABLE[type_name](description=description)


domain = Model("Domain", {
    "typical": _nullable(fields.Boolean)(description="false: the upload is unlike the model's training data (see "
                                                      "warning); null: not checked (nothing reached the network)"),
    "distance_percentile": fields.Float(description="where the upload's distance to the training data lies among "
                                                    "validation inputs' (0-100)"),
    "threshold_percentile": fields.Float(description="flagged beyond this percentile of validation inputs"),
    "rows_checked": fields.Integer(description="network inputs (objects, views, tiles) the check looked at"),
    "warning": _nullable(fields.String)(description="in words, when typical is false"),
    "note": _nullable(fields.String)(description="why it was not checked, when typical is null"),
})


def answer(model) -> tuple[Model, Model]:
    """The response schema of one model's predict call, from its model.json ``output``: (its prediction, the
    answer); both need registering."""
    name = "".join(part.capitalize() for part in model.spec.id.split("_"))
    prediction = Model(f"{name}Prediction", {key: _field(value) for key, value in model.output.prediction.items()})
    return prediction, Model(f"{name}Answer", {
        "status": fields.String(example="ok"),
        "model": fields.String(example=model.spec.id),
        "version": fields.String(example=model.spec.version),
        "weights_sha256": fields.String(description="the weights that answered (model.json weights.sha256)"),
        "request_id": fields.String(description="the X-Request-ID of the request (yours, or one made for it)"),
        "sample_id": _nullable(fields.String)(description="the sample_id you sent, if any"),
        "image": fields.Raw(description="width and height of the upload (and exif_orientation if it was turned)"),
        "predictions": fields.List(fields.Nested(prediction)),
        **{key: _field(value) for key, value in model.output.answer.items()},
        "domain": _nullable(fields.Nested)(domain, description="how typical the upload is of the data the model "
                                                               "learned from (models with a domain check)"),
        "overlay_png": _nullable(fields.String)(description="format=json_with_png: the picture as a PNG data URL"),
        "geojson": _nullable(fields.Raw)(description="format=json_with_png, models with GeoJSON: the predictions "
                                                      "as a FeatureCollection"),
    })


error = Model("Error", {
    "status": fields.String(example="error"),
    "message": fields.String(description="what was wrong, in words"),
})

label = Model("Label", {"id": AnyValue(description="the model's class id"), "name": fields.String()})

labels = Model("Labels", {"count": fields.Integer(), "labels": fields.List(fields.Nested(label))})

option = Model("Option", {
    "name": fields.String(), "type": fields.String(), "default": AnyValue(), "help": fields.String(),
    "choices": fields.List(AnyValue), "range": fields.List(AnyValue, description="[minimum, maximum]; null: open"),
})

metadata = Model("ModelMetadata", {
    "id": fields.String(example="leukocyte"),
    "name": fields.String(),
    "description": fields.String(),
    "type": fields.String(),
    "source": fields.String(),
    "license": fields.String(),
    "version": fields.String(),
    "input": fields.Raw(description="what the model accepts and at which resolution"),
    "labels": fields.List(fields.Nested(label)),
    "metrics": fields.Raw(description="measured on a held-out split, with the split described"),
    "data": fields.Raw(description="training-data provenance"),
    "training": fields.Raw(description="how the shipped weights were trained"),
    "options": fields.List(fields.Nested(option), description="fields accepted by /predict"),
    "output": fields.Raw(description="the fields of an answer: prediction and answer, each field's type and meaning"),
    "files": fields.List(fields.String, description="the multipart file fields /predict reads"),
    "whole_slides": fields.Boolean(description="whether POST /model/{id}/jobs takes whole slides"),
    "status": fields.String(description="loading, ready or failed"),
    "runtime": fields.String(description="onnx or tensorflow once loaded (setting MMAX_RUNTIME)"),
})

metadata_list = Model("ModelMetadataList", {"models": fields.List(fields.Nested(metadata))})

prediction = Model("Prediction", {
    "label": fields.String(),
    "probability": fields.Float(min=0, max=1),
    "bbox": fields.List(fields.Integer, description="[x, y, width, height] in pixels of the upload"),
    "probabilities": fields.Raw(description="every class's probability"),
})

prediction_response = Model("PredictResponse", {
    "status": fields.String(example="ok"),
    "model": fields.String(example="leukocyte"),
    "version": fields.String(),
    "image": fields.Raw(description="width and height of the upload"),
    "predictions": fields.List(fields.Nested(prediction)),
    "counts": fields.Raw(description="predictions per label, where the model counts"),
})

health = Model("Health", {
    "status": fields.String(example="ok"),
    "models": fields.Raw(description="each enabled model's state"),
    "message": fields.String(),
})


job_links = Model("JobLinks", {
    "self": fields.String(), "result": fields.String(), "heatmap": fields.String(), "geojson": fields.String(),
})

job = Model("Job", {
    "id": fields.String(description="32 hexadecimal characters"),
    "model": fields.String(example="metastasis"),
    "status": fields.String(enum=["queued", "running", "done", "failed", "cancelled"]),
    "progress": fields.Float(min=0, max=1),
    "message": fields.String(description="what it is doing, or why it failed"),
    "attempts": fields.Integer(description="runs started; a job whose runner died is re-queued"),
    "slide": fields.String(description="the uploaded file's name or the slide path"),
    "created": fields.String(description="ISO 8601, UTC"),
    "updated": fields.String(description="ISO 8601, UTC"),
    "links": fields.Nested(job_links),
    "sample_id": _nullable(fields.String)(description="the sample_id sent with the slide, if any"),
})

job_list = Model("JobList", {"jobs": fields.List(fields.Nested(job))})

ALL = (error, label, labels, option, metadata, metadata_list, prediction, prediction_response, health, domain,
       job_links, job)
