"""Response schemas for the OpenAPI document, kept apart from the routes that use them."""
from __future__ import annotations

from flask_restx import Model, fields


class AnyValue(fields.Raw):
    """A value of any JSON type (flask-restx's Raw documents itself as an object)."""

    __schema_type__ = None


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
    "status": fields.String(enum=["queued", "running", "done", "failed"]),
    "progress": fields.Float(min=0, max=1),
    "message": fields.String(description="what it is doing, or why it failed"),
    "attempts": fields.Integer(description="runs started; a job whose runner died is re-queued"),
    "slide": fields.String(description="the uploaded file's name or the slide path"),
    "created": fields.String(description="ISO 8601, UTC"),
    "updated": fields.String(description="ISO 8601, UTC"),
    "links": fields.Nested(job_links),
})

job_list = Model("JobList", {"jobs": fields.List(fields.Nested(job))})

ALL = (error, label, labels, option, metadata, metadata_list, prediction, prediction_response, health,
       job_links, job)
