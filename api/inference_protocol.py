"""The Open Inference Protocol (KServe v2, REST) beside the MAX routes, for clients built for Triton, KServe or
MLServer (e.g. ``tritonclient[http]``).

A model takes one BYTES tensor per file field (``image``; protein: ``red``, ``green``, ``blue``, ``yellow``)
of shape [N]: N encoded image files — base64 strings in a JSON body, raw bytes with the binary tensor
extension. Model options are the request's ``parameters`` (plus ``sample_id``). The answer is one BYTES tensor
``predictions`` of shape [N]: element i is the JSON document ``POST /model/<id>/predict`` answers for image i.
Every image runs through the same admission, time budget, pixel limit and batcher as the MAX routes.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import struct
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from api.errors import http_message
from api.forms import take_sample_id
from api.model import analyse, answer_document
from config import SERVICE_VERSION
from core.errors import ClientError, ModelNotFound
from core.options import parse_options
from core.registry import ModelRegistry

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUT = "predictions"
#: request parameters of the protocol itself (and its clients), not model options
PROTOCOL_PARAMETERS = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps({"error": message}), status, headers or {}, mimetype="application/json")


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


def bytes_elements(raw: bytes) -> list[bytes]:
    """A BYTES tensor in the binary extension's layout: each element a 4-byte little-endian length, then its bytes."""
    elements, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ClientError("binary BYTES tensor data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise ClientError("binary BYTES tensor data is shorter than an element's stated length")
        elements.append(raw[at:at + length])
        at += length
    return elements


def serialise_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def read_request() -> tuple[dict[str, Any], bytes]:
    """(the JSON inference request, the binary data after it) of this request."""
    body = request.get_data(cache=False)
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        header, binary = body, b""
    else:
        if not length.isdigit() or int(length) > len(body):
            raise ClientError(f"{HEADER_LENGTH} must be the JSON header's length in bytes, at most the body's "
                              f"({len(body)})")
        header, binary = body[:int(length)], body[int(length):]
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ClientError("the inference request is not JSON (binary data needs the header "
                          f"{HEADER_LENGTH})") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise ClientError("the inference request needs a list 'inputs' of tensors")
    return document, binary


def input_elements(document: dict[str, Any], binary: bytes) -> dict[str, list[bytes]]:
    """Each input tensor's elements (encoded files), from base64 JSON data or the binary part, in order."""
    tensors, at = {}, 0
    for tensor in document["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ClientError("every input needs a 'name'")
        name = tensor["name"][:60]
        if tensor.get("datatype") != "BYTES":
            raise ClientError(f"input '{name}' must have datatype BYTES (encoded image files), not "
                              f"{str(tensor.get('datatype'))[:20]!r}")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or at + size > len(binary):
                raise ClientError(f"input '{name}': binary_data_size {str(size)[:20]} is beyond the binary data "
                                  f"({len(binary) - at} bytes left)")
            elements = bytes_elements(binary[at:at + size])
            at += size
        else:
            data = tensor.get("data")
            if not isinstance(data, list) or not all(isinstance(item, str) for item in _flat(data)):
                raise ClientError(f"input '{name}': 'data' must list base64-encoded files (or send it binary)")
            try:
                elements = [base64.b64decode(item, validate=True) for item in _flat(data)]
            except (binascii.Error, ValueError):
                raise ClientError(f"input '{name}': an element is not base64 (JSON data carries each file "
                                  f"base64-encoded)") from None
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape) or \
                math.prod(shape) != len(elements):
            raise ClientError(f"input '{name}': shape {str(shape)[:40]} does not hold its {len(elements)} element(s)")
        tensors[name] = elements
    return tensors


def _flat(data: list) -> list:
    return [leaf for item in data for leaf in (_flat(item) if isinstance(item, list) else [item])]


def _option_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def create_blueprint(registry: ModelRegistry) -> Blueprint:
    v2 = Blueprint("inference_protocol", __name__, url_prefix="/v2")

    @v2.errorhandler(ClientError)
    def _client_error(exc: ClientError):
        retry = getattr(exc, "retry_after_s", None)
        return _error(exc.message, exc.status, {"Retry-After": str(retry)} if retry else None)

    @v2.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return _error(http_message(exc), exc.code or 500)

    @v2.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return _error("internal error; the server logged the details", 500)

    def model_of(name: str, version: str | None):
        model = registry.get(name)  # 404 for an unknown model
        if version is not None and version != model.spec.version:
            raise ModelNotFound(f"model '{name}' has version {model.spec.version} only, not '{version[:40]}'")
        return model

    @v2.get("")
    def server_metadata():
        return _json({"name": "microscopy-max", "version": SERVICE_VERSION,
                      "extensions": ["binary_tensor_data"]})

    @v2.get("/health/live")
    def live():
        return _json({"live": True})

    @v2.get("/health/ready")
    def ready():
        return _json({"ready": registry.ready}, 200 if registry.ready else 503)

    @v2.get("/models/<name>")
    @v2.get("/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None):
        model = model_of(name, version)
        files = list(model.channel_fields) or ["image"]  # one input per file a client sends
        return _json({
            "name": name, "versions": [model.spec.version], "platform": f"microscopy-max ({model.runtime or 'loading'})",
            "inputs": [{"name": field, "datatype": "BYTES", "shape": [-1]} for field in files],
            "outputs": [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {option.name: option.describe() for option in model.declared_options()
                           if option.name != "format"},
        })

    @v2.get("/models/<name>/ready")
    @v2.get("/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None):
        model_of(name, version)
        is_ready = registry.state[name] == "ready"
        return _json({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    @v2.post("/models/<name>/infer")
    @v2.post("/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None):
        model = model_of(name, version)
        document, binary = read_request()
        tensors = input_elements(document, binary)
        fields = ("image", *model.channel_fields)
        unknown = sorted(set(tensors) - set(fields))
        if unknown or not tensors:
            raise ClientError(f"unknown input(s) {', '.join(map(repr, unknown))[:200]}; model '{name}' takes "
                              f"{', '.join(map(repr, fields))}")
        counts = {len(elements) for elements in tensors.values()}
        if len(counts) != 1:
            raise ClientError("every input tensor must hold the same number of images")
        parameters = document.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ClientError("'parameters' must be an object of model options")
        given = {key: _option_text(value) for key, value in parameters.items() if key not in PROTOCOL_PARAMETERS}
        sample_id = take_sample_id(given)
        if given.get("format", "json") != "json":
            raise ClientError("the inference protocol answers JSON documents: leave out 'format'")
        options = parse_options(model.declared_options(), given, ignore=set())
        answers = []
        for index in range(counts.pop()):
            uploads = {field: elements[index] for field, elements in tensors.items()}
            answered, inputs, result = analyse(registry, name, uploads, options)
            answers.append(json.dumps(answer_document(answered, inputs, result, sample_id)).encode())
        return inference_response(document, name, model.spec.version, answers)

    return v2


def inference_response(document: dict[str, Any], name: str, version: str, answers: list[bytes]) -> Response:
    """The answers as the output tensor ``predictions``: binary when the request asks, else JSON strings."""
    asked = {o.get("name"): o for o in document.get("outputs") or [] if isinstance(o, dict)}
    if asked and OUTPUT not in asked:
        raise ClientError(f"the only output is '{OUTPUT}'")
    binary = (asked.get(OUTPUT, {}).get("parameters") or {}).get("binary_data",
                                                                  (document.get("parameters") or {}).get(
                                                                      "binary_data_output", False))
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "BYTES", "shape": [len(answers)]}
    body = {"model_name": name, "model_version": version, "outputs": [output]}
    if isinstance(document.get("id"), str):
        body["id"] = document["id"][:128]
    if not binary:
        output["data"] = [answer.decode() for answer in answers]
        return _json(body)
    data = serialise_bytes(answers)
    output["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps(body).encode()
    return Response(header + data, 200, {HEADER_LENGTH: str(len(header))}, mimetype="application/octet-stream")
