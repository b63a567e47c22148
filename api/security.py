"""Optional API key: when configured, every route but health probes and the docs needs ``X-API-Key``."""
from __future__ import annotations

import hmac

from flask import Flask, request

from api.errors import error_body

AUTHORIZATIONS = {"apikey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
# Orchestrators probe health without secrets; the Swagger UI, its document and the lab page carry no data
# (the page asks for the key and sends it with its calls).
OPEN_PATHS = ("/health/", "/v2/health/", "/swaggerui/", "/ui/")
OPEN_EXACT = {"/", "/swagger.json", "/ui"}


def install(app: Flask, api_key: str | None) -> None:
    if not api_key:
        return
    expected = api_key.encode()

    @app.before_request
    def _check_api_key():
        if request.path in OPEN_EXACT or request.path.startswith(OPEN_PATHS):
            return None
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return None  # a browser's CORS preflight never carries credentials; the real request will

        given = request.headers.get("X-API-Key", "")
        if not hmac.compare_digest(given.encode(), expected):  # constant time: no guessing by timing
            reason = "missing" if not given else "wrong"
            return error_body(f"{reason} API key: send it in the X-API-Key header"), 401
        return None
