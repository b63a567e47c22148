"""The fields and files of a multipart request, each given once and named; and the fields every route takes
besides a model's options (``sample_id``)."""
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


SAMPLE_ID = "sample_id"
SAMPLE_ID_HELP = "optional: your sample's accession number (up to 128 printable characters), returned in the answer"


def take_sample_id(given: dict[str, str]) -> str | None:
    """Remove and return the optional ``sample_id`` (a LIMS accession carried through to the answer)."""
    value = given.pop(SAMPLE_ID, None)
    if value is None:
        return None
    if not 0 < len(value) <= 128 or not value.isprintable():
        raise ClientError(f"'{SAMPLE_ID}' must be 1 to 128 printable characters")
    return value
