"""The protein model: four channels in any accepted form → cells with COCO RLE masks and multi-label answers."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from tests.conftest import SHARED, config_with, make_app, needs
from tests.images import encode, hpa_field

HPA = SHARED / "data" / "protein" / "hpa2018"


def post(client, files: dict[str, bytes], **form):
    data = {name: (io.BytesIO(content), f"{name}.png") for name, content in files.items()}
    data.update({k: str(v) for k, v in form.items()})
    return client.post("/model/protein/predict", data=data, content_type="multipart/form-data")


def channel_files(field: dict[str, Image.Image]) -> dict[str, bytes]:
    return {name: encode(image) for name, image in field.items()}


def test_four_channels_give_one_prediction_per_cell_with_decodable_masks(client):
    body = post(client, channel_files(hpa_field())).get_json()
    assert body["cell_count"] == 2 and [p["cell_id"] for p in body["predictions"]] == [1, 2]
    for prediction, (cx, cy) in zip(body["predictions"], ((80, 90), (180, 160))):
        mask = coco_mask.decode({"size": prediction["mask"]["size"], "counts": prediction["mask"]["counts"].encode()})
        assert mask.shape == (256, 256) and mask[cy, cx] == 1
        assert abs(int(mask.sum()) - np.pi * 40 ** 2) < 0.3 * np.pi * 40 ** 2  # the drawn cell body
        x, y, w, h = prediction["bbox"]
        assert x <= cx < x + w and y <= cy < y + h
        assert all(set(label) == {"id", "label", "probability"} for label in prediction["labels"])
        probabilities = [label["probability"] for label in prediction["labels"]]
        assert probabilities == sorted(probabilities, reverse=True)


def test_image_labels_follow_the_calibrated_thresholds_and_their_scale(client):
    thresholds = client.get("/model/protein/metadata").get_json()["inference"]["thresholds"]
    found = {}
    for scale in (0.1, 1.0, 5.0):
        labels = post(client, channel_files(hpa_field()), threshold_scale=scale).get_json()["image_labels"]
        assert all(label["probability"] >= min(1.0, thresholds[label["id"]] * scale) - 1e-4 for label in labels)
        assert [label["probability"] for label in labels] == sorted((label["probability"] for label in labels),
                                                                     reverse=True)
        found[scale] = {label["id"] for label in labels}
    assert found[5.0] <= found[1.0] <= found[0.1] and len(found[0.1]) > len(found[5.0])


def test_sixteen_bit_channels_match_eight_bit_ones(client):
    eight = post(client, channel_files(hpa_field())).get_json()
    sixteen = post(client, channel_files(hpa_field(dtype=np.uint16))).get_json()
    assert [p["bbox"] for p in eight["predictions"]] == [p["bbox"] for p in sixteen["predictions"]]


def test_one_four_channel_image_rgba_png_or_tiff(client):
    import tifffile

    field = hpa_field()
    stack = np.stack([np.asarray(field[name]) for name in ("red", "green", "blue", "yellow")], axis=-1)
    rgba = encode(Image.fromarray(stack, mode="RGBA"))
    pages, interleaved = io.BytesIO(), io.BytesIO()
    tifffile.imwrite(pages, np.moveaxis(stack, -1, 0), photometric="minisblack")  # 4 x H x W
    tifffile.imwrite(interleaved, stack, photometric="minisblack", planarconfig="contig")
    counts = [post(client, {"image": data}).get_json()["cell_count"]
              for data in (rgba, pages.getvalue(), interleaved.getvalue())]
    assert counts == [2, 2, 2]


@pytest.mark.parametrize("files, words", [
    ({"red": b"", "green": b"", "blue": b""}, "missing: yellow"),
    ({"image": "RGB"}, "four channels"),
])
def test_wrong_channels_are_400(client, files, words):
    if files.get("image") == "RGB":
        files = {"image": encode(Image.new("RGB", (64, 64)))}
    response = post(client, files)
    assert response.status_code == 400 and words in response.get_json()["message"]


def test_channels_of_different_sizes_are_400(client):
    files = channel_files(hpa_field())
    files["yellow"] = encode(Image.new("L", (128, 128)))
    response = post(client, files)
    assert response.status_code == 400 and "differ in size" in response.get_json()["message"]


def test_border_cells_can_be_dropped_and_png_outlines_cells(client):
    files = channel_files(hpa_field(cells=((80, 90), (240, 160))))  # the second cell is cut by the border
    assert post(client, files).get_json()["cell_count"] == 2
    assert post(client, files, drop_border_cells="true").get_json()["cell_count"] == 1
    response = post(client, files, format="png")
    width, height = Image.open(io.BytesIO(response.data)).size
    assert response.mimetype == "image/png" and width > 256 and height > 256  # the field, a banner and a key


def test_labels_and_the_2021_mapping(client):
    labels = client.get("/model/protein/labels").get_json()
    assert labels["count"] == 28 and labels["labels"][25]["name"] == "Cytosol"
    meta = client.get("/model/protein/metadata").get_json()
    mapping = meta["labels_2021"]["from_2018"]
    assert len(mapping) == 28 and mapping["25"] == 16 and mapping["27"] is None
    assert len(meta["inference"]["thresholds"]) == 28


def test_retraining_on_a_kaggle_style_folder(tmp_path: Path):
    """train.csv (Id,Target) + train/<id>_<colour>.png, as Kaggle's HPA data: the lab's own retraining path."""
    from core.training.__main__ import main as train_main

    data = tmp_path / "kaggle"
    (data / "train").mkdir(parents=True)
    rows = ["Id,Target"]
    for index in range(10):
        cells = ((60 + 10 * (index % 3), 70), (180, 170 - 5 * (index % 4)))
        for name, image in hpa_field(cells=cells).items():
            image.save(data / "train" / f"f{index}_{name}.png")
        rows.append(f"f{index},{'0 25' if index % 2 else '25'}")
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    assets = tmp_path / "assets"
    train_main(["protein", "--data", str(data), "--folds", "5", "--out", str(assets / "protein")])
    meta = json.loads((assets / "protein" / "model.json").read_text())
    test = meta["metrics"]["test"]
    assert len(meta["inference"]["thresholds"]) == 28 and test["fields"] == 10
    # Every field is labelled Cytosol: the constant answer includes it, and so does the model for every field.
    assert "Cytosol" in test["constant_answer"] and test["per_class"]["Cytosol"]["recall"] == 1.0
    assert set(test["per_class"]) <= {"Nucleoplasm", "Cytosol"}
    assert "Rods & rings" in meta["inference"]["not_predicted"]["classes"]
    assert "Cytosol" not in meta["inference"]["not_predicted"]["classes"]
    client = make_app(config_with(assets_dir=assets)).test_client()
    body = post(client, channel_files(hpa_field())).get_json()
    assert body["cell_count"] == 2 and "Cytosol" in [label["label"] for label in body["image_labels"]]


@needs(HPA)
def test_segmentation_on_real_hpa_fields_finds_plausible_cells(client):
    ids = sorted({p.name.rsplit("_", 1)[0] for p in (HPA / "images").glob("*_blue.png")})[:3]
    for field_id in ids:
        files = {name: (HPA / "images" / f"{field_id}_{name}.png").read_bytes()
                 for name in ("red", "green", "blue", "yellow")}
        body = post(client, files).get_json()
        assert 5 <= body["cell_count"] <= 60, (field_id, body["cell_count"])
