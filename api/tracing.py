"""Request IDs: ``X-Request-ID`` taken from the client (or made), echoed in every response and the access log,
so that a LIMS can match an answer, a log line and a support question."""
from __future__ import annotations

import re
import uuid

from flask import Flask, g, request

HEADER = "X-Request-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id() -> str:
    """This request's ID (inside a request)."""
    return g.mmax_request_id


def install(app: Flask) -> None:
    @app.before_request
    def _take_or_make_id():
        given = request.headers.get(HEADER, "")
        # A client's ID is kept when it is a plain token; anything else (too long, spaces, control characters
        # that could forge log lines) is replaced by a fresh one, which the response then carries.
        g.mmax_request_id = given if _VALID.match(given) else uuid.uuid4().hex

    @app.after_request
    def _echo_id(response):
        if "mmax_request_id" in g:
            response.headers[HEADER] = g.mmax_request_id
        return response
