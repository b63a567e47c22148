"""Optional API key: when configured, model routes need it in the ``X-API-Key`` header."""
from __future__ import annotations

import hmac
from functools import wraps
from typing import Callable

from flask import current_app, request

from api.errors import error_body

AUTHORIZATIONS = {"apikey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def require_api_key(view: Callable) -> Callable:
    @wraps(view)
    def checked(*args, **kwargs):
        expected = current_app.config["MMAX"].api_key
        given = request.headers.get("X-API-Key", "")
        if expected and not hmac.compare_digest(given.encode(), expected.encode()):
            reason = "missing" if not given else "wrong"
            return error_body(f"{reason} API key: send it in the X-API-Key header"), 401
        return view(*args, **kwargs)

    return checked
