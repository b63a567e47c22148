"""The REST layer: one set of routes for every model of the registry (Swagger UI at ``/``)."""
from __future__ import annotations

from flask import Flask

from api import health, inference_protocol, jobs, metrics, model, security, tracing, ui
from api.errors import ServiceApi, register_error_handlers
from api.multipart import ServiceRequest
from api.security import AUTHORIZATIONS
from config import SERVICE_VERSION
from core.jobs import JobRunner
from core.registry import ModelRegistry


def build_api(app: Flask, registry: ModelRegistry, runner: JobRunner) -> ServiceApi:
    app.request_class = ServiceRequest  # multipart bodies parsed by python-multipart (api/multipart.py)
    api = ServiceApi(app, version=SERVICE_VERSION, title="microscopy-max",
              description="Microscopy models as one REST service. Every model answers the same routes: "
                          "list them with GET /model/metadata, run one with POST /model/{id}/predict; "
                          "whole slides go to POST /model/{id}/jobs and are followed at /jobs/{job_id}.",
              doc="/", authorizations=AUTHORIZATIONS,
              security="apikey" if app.config["MMAX"].api_key else None)
    api.add_namespace(model.create_namespace(registry), path="/model")
    api.add_namespace(jobs.create_namespace(registry, runner), path="/")
    api.add_namespace(health.create_namespace(registry), path="/health")
    api.add_namespace(metrics.ns, path="/metrics")
    register_error_handlers(app, api)
    tracing.install(app)
    app.register_blueprint(ui.blueprint)
    app.register_blueprint(inference_protocol.create_blueprint(registry))
    security.install(app, app.config["MMAX"].api_key)
    metrics.install(app, set(registry.models))
    return api
