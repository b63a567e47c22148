"""Every error, ours or the framework's, as ``{"status": "error", "message": ...}`` with the right code."""
from __future__ import annotations

import logging

from flask import Flask
from flask_restx import Api
from werkzeug.exceptions import HTTPException

from core.errors import ClientError

log = logging.getLogger(__name__)


def error_body(message: str) -> dict[str, str]:
    return {"status": "error", "message": message}


def _http_headers(exc: HTTPException) -> dict[str, str]:
    """The exception's own headers (e.g. ``Allow`` on a 405), without its HTML content type."""
    return {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}


def http_message(exc: HTTPException) -> str:
    if exc.code == 413:
        from flask import request

        return f"upload too large: the limit is {request.max_content_length:,} bytes"
    return exc.description or exc.name


def client_error_response(exc: ClientError) -> tuple[dict[str, str], int, dict[str, str]]:
    retry = getattr(exc, "retry_after_s", None)  # e.g. a full job queue: when to come back
    return error_body(exc.message), exc.status, ({"Retry-After": str(retry)} if retry else {})


class ServiceApi(Api):
    """Flask-RESTX logs every answer of 500 or more as a crash, with a traceback; a deliberate 503 (a model
    still loading, at its admission limit, over its time budget; a full job queue) is one log line."""

    def handle_error(self, e: Exception):
        if isinstance(e, ClientError):
            log.info("answered %d: %s", e.status, e.message)
            return self.make_response(*client_error_response(e))
        return super().handle_error(e)


def register_error_handlers(app: Flask, api: Api) -> None:
    @api.errorhandler(ClientError)
    def _client_error(exc: ClientError):
        return client_error_response(exc)

    @api.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return error_body(http_message(exc)), exc.code, _http_headers(exc)

    @api.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_body("internal error; the server logged the details"), 500

    # Outside the API's routes (unknown URL, wrong method on a static page) Flask answers; same shape.
    @app.errorhandler(HTTPException)
    def _flask_http_error(exc: HTTPException):
        return error_body(http_message(exc)), exc.code, _http_headers(exc)
