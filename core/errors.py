"""Errors a client can cause, each with the HTTP status the API answers with."""
from __future__ import annotations


class ClientError(Exception):
    """A problem with the request; the message is shown to the client as is."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
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
