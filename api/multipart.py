"""Multipart bodies parsed by python-multipart's parser instead of werkzeug's, with werkzeug's results and
limits: the same ``request.form`` and ``request.files`` and the same 413 for too many parts or too large a
field. A body python-multipart refuses (malformed, or a form werkzeug is lenient with: a preamble, an empty
part without its line break) and a body over ``IN_MEMORY_MAX_BYTES`` or of unknown length (chunked) are
parsed by werkzeug, whose answer then stands.

Why: werkzeug's parser searches its whole buffer for the boundary at every event, 0.19 ms for a 96-px patch
(25 kB, about 3 % of its whole request) and 1.3 ms for a 1.2 MB spread; python-multipart's state machine
reads each byte once: 0.015 and 0.27 ms (README, Performance).
"""
from __future__ import annotations

import io
import logging
from typing import IO, Any

from flask import Request
from python_multipart.multipart import MultipartParser, MultipartState
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

#: bodies up to this size are read whole and parsed at once (a larger one is streamed by werkzeug's parser)
IN_MEMORY_MAX_BYTES = 16 * 2**20
#: a part's text is decoded with its declared charset only from this list (werkzeug's), else as UTF-8
CHARSETS = {"ascii", "us-ascii", "utf-8", "iso-8859-1"}

# A malformed body is the client's mistake, answered 400 by the route; the library's warning adds nothing.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


class _Parts:
    """The parser's callbacks: each part's headers, then its bytes into a list (a field) or a stream (a file)."""

    def __init__(self, parser: FormDataParser, content_length: int | None):
        self.parser, self.content_length = parser, content_length
        self.fields: list[tuple[str | None, str]] = []
        self.files: list[tuple[str | None, FileStorage]] = []
        self.count = 0

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.data, "on_part_end": self.end}

    def begin(self) -> None:
        self.count += 1
        if self.parser.max_form_parts is not None and self.count > self.parser.max_form_parts:
            raise RequestEntityTooLarge()
        self.headers = Headers()
        self.name, self.value = bytearray(), bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers.add(self.name.decode().strip(" \t"), self.value.decode().strip(" \t"))  # not UTF-8: ValueError
        self.name, self.value = bytearray(), bytearray()

    def headers_finished(self) -> None:
        if "content-disposition" not in self.headers:
            raise ValueError("a multipart part without Content-Disposition")
        fields = parse_options_header(self.headers["content-disposition"])[1]
        self.field = fields.get("name")
        self.filename = fields.get("filename")
        self.size = 0
        if self.filename is None:
            self.text = bytearray()
            self.stream: IO[bytes] | None = None
        else:
            self.stream = self.parser.stream_factory(total_content_length=self.content_length,
                                                     filename=self.filename,
                                                     content_type=self.headers.get("content-type"),
                                                     content_length=0)

    def data(self, data: bytes, start: int, end: int) -> None:
        if self.stream is not None:
            self.stream.write(data[start:end])
            return
        self.size += end - start
        if self.parser.max_form_memory_size is not None and self.size > self.parser.max_form_memory_size:
            raise RequestEntityTooLarge()
        self.text += data[start:end]

    def end(self) -> None:
        if self.stream is None:
            charset = parse_options_header(self.headers.get("content-type"))[1].get("charset", "").lower()
            self.fields.append((self.field, self.text.decode(charset if charset in CHARSETS else "utf-8",
                                                             "replace")))
        else:
            self.stream.seek(0)
            self.files.append((self.field, FileStorage(self.stream, self.filename, self.field,
                                                       headers=self.headers)))


def read_exactly(stream: IO[bytes], size: int) -> bytes:
    """``size`` bytes of ``stream``, or fewer if it ends first (one read may return less than asked)."""
    chunks, got = [], 0
    while got < size and (chunk := stream.read(size - got)):
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class MultipartFormParser(FormDataParser):
    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> tuple[IO[bytes], MultiDict, MultiDict]:
        if content_length is None or content_length > IN_MEMORY_MAX_BYTES:
            return super()._parse_multipart(stream, mimetype, content_length, options)
        data = read_exactly(stream, content_length)
        try:
            fields, files = self._parse_fast(data, options.get("boundary", "").encode("latin-1"), content_length)
        except ValueError:  # a body python-multipart refuses: werkzeug's answer (it takes more, e.g. a preamble)
            return super()._parse_multipart(io.BytesIO(data), mimetype, content_length, options)
        return stream, fields, files

    def _parse_fast(self, data: bytes, boundary: bytes, content_length: int) -> tuple[MultiDict, MultiDict]:
        if not boundary:
            raise ValueError("missing boundary")
        parts = _Parts(self, content_length)
        parser = MultipartParser(boundary, parts.callbacks())
        parser.write(data)
        if parser.state != MultipartState.END:
            raise ValueError("the multipart body ends before its closing boundary")
        return self.cls(parts.fields), self.cls(parts.files)


class ServiceRequest(Request):
    form_data_parser_class = MultipartFormParser
