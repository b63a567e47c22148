"""The service's multipart parser (python-multipart) gives werkzeug's parser's answers and limits, body by body."""
from __future__ import annotations

import io

import numpy as np
import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from api.multipart import MultipartFormParser

BOUNDARY = "b0uNdArY"


def part(headers: list[str], content: bytes) -> bytes:
    return f"--{BOUNDARY}\r\n".encode() + "".join(f"{h}\r\n" for h in headers).encode() + b"\r\n" + content + b"\r\n"


def body(*parts: bytes, end: bytes = f"--{BOUNDARY}--\r\n".encode()) -> bytes:
    return b"".join(parts) + end


def field(name: str, value: bytes, *extra: str) -> bytes:
    return part([f'Content-Disposition: form-data; name="{name}"', *extra], value)


def upload(name: str, filename: str, content: bytes, content_type: str = "image/png") -> bytes:
    return part([f'Content-Disposition: form-data; name="{name}"; filename="{filename}"',
                 f"Content-Type: {content_type}"], content)


def parsed(parser: FormDataParser, data: bytes) -> tuple[list, list]:
    _, form, files = parser.parse(io.BytesIO(data), "multipart/form-data", len(data), {"boundary": BOUNDARY})
    return (list(form.items(multi=True)),
            [(key, f.filename, f.name, f.content_type, f.read()) for key, f in files.items(multi=True)])


# Binary content that holds the boundary's start, CRLFs and dashes without being a boundary.
TRICKY = bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8)) + \
    f"\r\n--{BOUNDARY[:-1]}x\r\n--\r\n".encode() * 3

BODIES = {
    "a file and fields": body(upload("image", "a.png", b"\x89PNG..."), field("threshold", b"0.5"),
                              field("sample_id", "µm-1".encode())),
    "a declared charset": body(field("note", "café".encode("iso-8859-1"), "Content-Type: text/plain; charset=iso-8859-1")),
    "an unknown charset is read as UTF-8": body(field("note", "café".encode(), "Content-Type: text/plain; charset=koi8-r")),
    "a UTF-8 file name": body(upload("image", "Spread_µ 1.png", b"pixels")),
    "a field given twice": body(field("mpp", b"1"), field("mpp", b"2")),
    "an empty file": body(upload("image", "empty.png", b"")),
    "a large file with boundary-like bytes": body(upload("image", "big.tif", TRICKY, "image/tiff")),
    "preamble and epilogue": b"ignored preamble\r\n" + body(field("a", b"1"), end=f"--{BOUNDARY}--\r\nepilogue".encode()),
    "a part without a name": body(part(["Content-Disposition: form-data"], b"x")),
    "truncated": body(upload("image", "a.png", b"\x89PNG" * 100))[:-30],
    "no closing boundary": body(field("a", b"1"), end=b""),
    "a part without Content-Disposition": body(part(["Content-Type: text/plain"], b"x")),
    "headers that are not UTF-8": body(part(['Content-Disposition: form-data; name="\xff"'.encode("latin-1").decode("latin-1")],
                                            b"x")).replace("ÿ".encode(), b"\xff"),
    "no boundary at all": b"just some bytes",
    "empty": b"",
}


@pytest.mark.parametrize("name", BODIES)
def test_the_parser_answers_as_werkzeugs(name: str):
    data = BODIES[name]
    expected = parsed(FormDataParser(), data)
    assert parsed(MultipartFormParser(), data) == expected
    if name.startswith(("a file", "a UTF-8", "a large", "a declared")):
        assert expected[0] or expected[1]  # the case parses to something: the comparison is not of two empties


@pytest.mark.parametrize("limits, data", [
    ({"max_form_parts": 3}, body(*(field(f"f{k}", b"1") for k in range(4)))),
    ({"max_form_memory_size": 1000}, body(field("long", b"x" * 1001))),
])
def test_limits_are_werkzeugs(limits: dict, data: bytes):
    for parser in (FormDataParser(**limits), MultipartFormParser(**limits)):
        with pytest.raises(RequestEntityTooLarge):
            parsed(parser, data)


def test_the_service_reads_uploads_with_it(client):
    from tests.images import encode, smear

    image = encode(smear(leukocytes=((160, 120, 20),), seed=1))
    answer = client.post("/model/leukocyte/predict", data={"image": (io.BytesIO(image), "cell.png"), "sample_id": "S-1"},
                         content_type="multipart/form-data")
    assert answer.status_code == 200 and answer.get_json()["sample_id"] == "S-1"
    assert client.application.request_class.form_data_parser_class is MultipartFormParser


def test_a_body_that_arrives_in_pieces_is_read_whole():
    class Trickle(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            return super().read(min(size, 1000) if size and size > 0 else 1000)

    data = BODIES["a large file with boundary-like bytes"]
    _, _, files = MultipartFormParser().parse(Trickle(data), "multipart/form-data", len(data), {"boundary": BOUNDARY})
    assert files["image"].read() == TRICKY
