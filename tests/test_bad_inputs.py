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
    check(post(client, model, {"image": good, "extra": good}), 400)             # a file it would not read
    check(post(client, model, {"image": good}), None)                           # and still serving


def test_a_vanishing_mpp_is_a_400_not_a_division_by_zero(client):
    for mpp in ("1e-170", "1e-9"):
        check(post(client, "mitosis", {"image": encode(smear())}, mpp=mpp), 400)


def test_every_channel_page_of_a_protein_tiff_is_size_checked(client):
    """Page 0 is small, a later page declares 30,000² (a sparse, tiled page: a few KB on disk)."""
    import tifffile

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        for _ in range(3):
            tif.write(np.zeros((64, 64), np.uint8))
        tile = np.zeros((256, 256), np.uint8)
        tif.write(iter([tile] * ((30_000 // 256 + 1) ** 2)), shape=((30_000 // 256 + 1) * 256,) * 2,
                  dtype=np.uint8, tile=(256, 256), compression="zlib")
    check(post(client, "protein", {"image": buffer.getvalue()}), 413)


def test_a_slide_path_with_nul_or_of_any_length_is_a_400(tmp_path):
    from core.errors import ClientError
    from core.jobs import resolve_slide_path

    for bad in ("a\x00b.svs", "a/" * 3000 + "b.svs"):
        with pytest.raises(ClientError) as error:
            resolve_slide_path(tmp_path, bad)
        assert error.value.status == 400


def test_leukocyte_windows_are_cut_from_the_image_as_if_it_were_padded_black():
    from core.models.leukocyte import crop_window

    rgb = np.random.default_rng(0).integers(1, 256, (90, 120, 3), dtype=np.uint8)
    padded = np.pad(rgb, ((40, 40), (40, 40), (0, 0)))
    for x, y in ((0, 0), (60.4, 45), (119, 89), (5, 80), (119, 0)):
        cx, cy = round(x), round(y)
        assert (crop_window(rgb, (x, y), 80) == padded[cy:cy + 80, cx:cx + 80]).all(), (x, y)


def test_unknown_models_in_every_route(client):
    for response in (client.get("/model/../metadata"), client.get("/model/%00/labels"),
                     client.post("/model/LEUKOCYTE/predict"), client.post("/model/nope/jobs")):
        assert response.status_code in {400, 404, 405} and response.get_json()["status"] == "error"
