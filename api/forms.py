"""The fields and files of a multipart request, each given once and named."""
from __future__ import annotations

from flask import request
from werkzeug.datastructures import FileStorage, MultiDict

from core.errors import ClientError


def single(fields: MultiDict) -> dict:
    """``fields`` as a plain mapping; a part without a name, or a field given more than once, is a 400
    (which of two values was meant cannot be known)."""
    out = {}
    for name, values in fields.lists():
        if not name:
            raise ClientError("a multipart part has no field name")
        if len(values) > 1:
            raise ClientError(f"field '{name[:100]}' is given {len(values)} times; give it once")
        out[name] = values[0]
    return out


def form_and_files(query: bool = True) -> tuple[dict[str, str], dict[str, FileStorage]]:
    """The request's form fields (and query fields when ``query``) and its files."""
    return single(request.values if query else request.form), single(request.files)
