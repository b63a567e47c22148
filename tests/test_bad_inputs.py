"""A corpus of malformed and awkward inputs, sent to every served model: never a 5xx, always JSON that
names the problem, and the server keeps serving."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.images import encode, smear

MODELS = ("leukocyte", "chromosome", "metastasis", "protein", "mitosis")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels while it carries almost no data."""
    data = bytearray(encode(Image.new("RGB", (8, 8))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def tiff(array: np.ndarray, **options) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


RGB = np.asarray(smear())
TIFF = tiff(RGB, photometric="rgb")

# name: (upload bytes, the status expected: an exact 4xx, or None when the image is valid and must be served)
UPLOADS = {
    "zero bytes": (b"", 400),
    "random bytes": (np.random.default_rng(1).bytes(3000), 415),
    "truncated png": (encode(smear())[:900], 415),
    "truncated jpeg": (encode(smear(), "JPEG")[:900], 415),
    "truncated tiff": (TIFF[: len(TIFF) // 3], 415),
    "png declaring 50,000 x 50,000": (png_declaring(50_000, 50_000), 413),
    "16-bit grey tiff": (tiff((RGB[..., 0].astype(np.uint16) * 257)), None),
    "float tiff": (tiff(RGB[..., 1].astype(np.float32) / 255), None),
    "cmyk jpeg": (encode(smear().convert("CMYK"), "JPEG"), None),
    "grey png": (encode(smear().convert("L")), None),
    "rgba png": (encode(smear().convert("RGBA")), None),
    "palette gif": (encode(smear().convert("P"), "GIF"), None),
    "one pixel": (encode(Image.new("RGB", (1, 1))), None),
    "a text file": (b"patient,result\n1,positive\n", 415),
}


def post(client, model: str, files: dict[str, bytes], **form):
    data = {name: (io.BytesIO(content), f"{name}.bin") for name, content in files.items()}
    data.update(form)
    return client.post(f"/model/{model}/predict", data=data, content_type="multipart/form-data")


def check(response, expected: int | None) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    if expected is None:
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
    else:
        body = response.get_json()
        assert response.status_code == expected and body["status"] == "error" and len(body["message"]) > 10


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", UPLOADS)
def test_uploads(client, model, case):
    content, expected = UPLOADS[case]
    if model == "protein" and expected is None and case != "rgba png":
        expected = 400  # a valid image, but not four channels
    check(post(client, model, {"image": content}), expected)


@pytest.mark.parametrize("model", MODELS)
def test_fields_and_options(client, model):
    good = encode(smear().convert("RGBA") if model == "protein" else smear())
    check(post(client, model, {"picture": good}), 400)                          # wrong field name
    check(post(client, model, {"image": good}, format="x" * 500_000), 400)      # a huge form field
    check(post(client, model, {"image": good}, **{"x" * 300: "1"}), 400)        # a huge unknown field name
    check(post(client, model, {"image": good}, format="nan"), 400)
    numeric = {"leukocyte": "scale", "metastasis": "mpp", "protein": "threshold_scale", "mitosis": "mpp"}.get(model)
    if numeric:
        for value in ("nan", "-1", "1e309", "inf", "", "0x10"):
            check(post(client, model, {"image": good}, **{numeric: value}), 400)
    check(post(client, model, {"image": good}), None)                           # and still serving


def test_unknown_models_in_every_route(client):
    for response in (client.get("/model/../metadata"), client.get("/model/%00/labels"),
                     client.post("/model/LEUKOCYTE/predict"), client.post("/model/nope/jobs")):
        assert response.status_code in {400, 404, 405} and response.get_json()["status"] == "error"
