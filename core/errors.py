"""Errors a client can cause, each with the HTTP status the API answers with."""
from __future__ import annotations

import re

# An absolute path of two or more parts (not a relative one a client sent, e.g. 'cases/a.svs').
_HOST_PATH = re.compile(r"(?<![\w.])(?:/[\w.\-]+)+/([\w.\-]+)")


def without_host_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part: where the server keeps files is nobody's business."""
    return _HOST_PATH.sub(r"\1", text)


class ClientError(Exception):
    """A problem with the request; the message is shown to the client, with host paths cut to file names."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        message = without_host_paths(message)
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadOption(ClientError):
    status = 400


class UnsupportedImage(ClientError):
    status = 415


class ImageTooLarge(ClientError):
    status = 413


class ModelNotFound(ClientError):
    status = 404


class ModelNotReady(ClientError):
    status = 503


class AssetError(RuntimeError):
    """A model's assets are missing or corrupt: the service must not start."""
