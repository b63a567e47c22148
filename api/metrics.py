"""Prometheus metrics: requests, latency and errors per route and model, and time spent in models.

Under gunicorn with several workers set ``PROMETHEUS_MULTIPROC_DIR`` (gunicorn.conf.py does) so that
``/metrics`` adds up every worker, not only the one that answers.
"""
from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from flask_restx import Namespace, Resource
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("mmax_requests_total", "HTTP requests answered", ["route", "model", "method", "status"])
ERRORS = Counter("mmax_errors_total", "HTTP requests answered with a 4xx or 5xx code", ["route", "model", "status"])
LATENCY = Histogram("mmax_request_seconds", "time to answer an HTTP request", ["route", "model"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
INFERENCE = Histogram("mmax_inference_seconds", "time inside a model's predict (decode excluded)", ["model"],
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BATCH_IMAGES = Histogram("mmax_batch_images", "images in one forward pass (micro-batching)", ["model"],
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
BATCH_REQUESTS = Histogram("mmax_batch_requests", "requests sharing one forward pass (micro-batching)", ["model"],
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))
REJECTED = Counter("mmax_rejected_total", "requests answered 503 because the model had MMAX_QUEUE_MAX in progress",
                   ["model"])
QUEUE_WAIT = Histogram("mmax_queue_seconds", "time a request's images waited for a shared forward pass", ["model"],
                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def observe_rejection(model_id: str) -> None:
    REJECTED.labels(model=model_id).inc()


def observe_queue_wait(model_id: str, seconds: float) -> None:
    QUEUE_WAIT.labels(model=model_id).observe(seconds)


def observe_inference(model_id: str, seconds: float) -> None:
    INFERENCE.labels(model=model_id).observe(seconds)


def observe_batch(model_id: str, images: int, requests: int) -> None:
    BATCH_IMAGES.labels(model=model_id).observe(images)
    BATCH_REQUESTS.labels(model=model_id).observe(requests)


def install(app: Flask, known_models: set[str]) -> None:
    """Count every request; a model label only for served models (unknown ids would grow without bound)."""

    @app.before_request
    def _start_timer():
        g.mmax_started = time.perf_counter()

    @app.after_request
    def _record(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        model = (request.view_args or {}).get("model_id", "")
        model = model if model in known_models or not model else "unknown"
        status = str(response.status_code)
        REQUESTS.labels(route, model, request.method, status).inc()
        if response.status_code >= 400:
            ERRORS.labels(route, model, status).inc()
        if "mmax_started" in g:
            LATENCY.labels(route, model).observe(time.perf_counter() - g.mmax_started)
        return response


ns = Namespace("metrics", description="Prometheus metrics")


@ns.route("")
class Metrics(Resource):
    @ns.produces([CONTENT_TYPE_LATEST.split(";")[0]])
    @ns.response(200, "Prometheus text exposition format")
    def get(self):
        """Prometheus text format: requests, latency histogram, errors and inference time per model."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
