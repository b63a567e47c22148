"""The chromosome model: segmentation of drawn spreads, the route's contract, real spreads when present."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, ImageDraw

from config import ROOT
from core.evaluation import match_centres
from core.models.chromosome import segment_spread
from core.models.chromosome_training import ChromosomeTraining, yolo_boxes
from tests.conftest import SHARED, needs
from tests.images import RODS, encode, spread

PARAMS = json.loads((ROOT / "assets" / "chromosome" / "model.json").read_text())["input"]["segmentation"]
METAPHASES = SHARED / "data" / "chromosome" / "metaphases"


def rod_box(x, y, length, angle, pad=6):
    dx, dy = abs(np.cos(np.radians(angle))) * length / 2 + pad, abs(np.sin(np.radians(angle))) * length / 2 + pad
    return x - dx, y - dy, x + dx, y + dy


def test_segmentation_finds_each_drawn_rod_as_one_object():
    grey = np.asarray(spread(rods=RODS)).mean(axis=2)
    found = segment_spread(grey, PARAMS)
    for x, y, length, angle in RODS:
        owner = found.labels[int(y), int(x)]
        assert owner, f"rod at {(x, y)} not segmented"
        obj = next(o for o in found.objects if o.label == owner)
        top, left, bottom, right = obj.bbox
        x0, y0, x1, y1 = rod_box(x, y, length, angle)
        assert x0 <= left and right <= x1 and y0 <= top and bottom <= y1, "rod merged with something else"
    rod_owners = {found.labels[int(y), int(x)] for x, y, _, _ in RODS}
    assert len(rod_owners) == len(RODS)
    nx, ny, _ = 480, 330, 70
    assert found.labels[ny - 60:ny + 60, nx - 60:nx + 60].any(), "the nucleus should give objects to reject"


def test_touching_pair_is_split_by_the_watershed():
    image = spread(rods=RODS, nucleus=None)
    draw = ImageDraw.Draw(image)
    # Two dark blobs joined by a paler bridge: one component, two dark cores.
    draw.line([(470, 100), (560, 100)], fill=(105, 95, 125), width=7)
    for cx in (470, 560):
        draw.ellipse([cx - 14, 86, cx + 14, 114], fill=(45, 30, 70))
    found = segment_spread(np.asarray(image).mean(axis=2), PARAMS)
    assert found.labels[100, 470] and found.labels[100, 560]
    assert found.labels[100, 470] != found.labels[100, 560]


def test_matching_is_one_to_one():
    boxes = [(0, 0, 10, 10), (20, 0, 30, 10)]
    assert match_centres([(5, 5), (6, 6), (25, 5), (50, 50)], boxes) == 2


def test_yolo_boxes_to_pixels(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.5 0.1 0.2\n2 0.25 0.25 0.1 0.1\n")
    assert np.allclose(yolo_boxes(path, 200, 100), [(90, 40, 110, 60), (40, 20, 60, 30)])


def test_route_contract_spread_crop_and_png(client):
    upload = encode(spread(rods=RODS))
    body = client.post("/model/chromosome/predict", data={"image": (io.BytesIO(upload), "s.png")},
                       content_type="multipart/form-data").get_json()
    assert body["status"] == "ok" and body["predictions"]
    for p in body["predictions"]:
        assert p["label"] in {"chromosome", "non_chromosome"} and 0 <= p["probability"] <= 1
        x, y, w, h = p["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 640 and y + h <= 480
    assert sum(body["counts"].values()) == len(body["predictions"])

    crop = encode(spread(size=(96, 96), rods=((48, 48, 36, 60),), nucleus=None))
    one = client.post("/model/chromosome/predict", data={"image": (io.BytesIO(crop), "c.png"), "mode": "crop"},
                      content_type="multipart/form-data").get_json()
    assert len(one["predictions"]) == 1

    png = client.post("/model/chromosome/predict", data={"image": (io.BytesIO(upload), "s.png"), "format": "png"},
                      content_type="multipart/form-data")
    drawn = Image.open(io.BytesIO(png.data))
    assert png.mimetype == "image/png" and drawn.width == 640 and drawn.height > 480  # with the count banner


@needs(METAPHASES)
def test_held_out_spread_is_counted_within_tolerance(app):
    """The crop classifier's pipeline on the spread of its test fold: never used for its training or early
    stopping (the detector trains on every spread, so it is measured leaving spreads out, not here)."""
    served = app.extensions["mmax_registry"].get("chromosome")
    import keras

    model = type(served)(served.spec)
    # segmentation and crop classifier, without the detector
    model.use_network(keras.saving.load_model(model.spec.weights_path, compile=False))
    held_out = set(model.spec.meta["metrics"]["detection"]["per_group"])
    result = ChromosomeTraining(model).evaluate(METAPHASES, held_out)
    assert result["f1"] >= 0.85, result
    for group in result["per_group"].values():
        assert group["count_error"] <= 0.15, result


def test_separated_sister_chromatids_pair_but_crossing_neighbours_do_not():
    def draw(rods):
        image = spread(rods=RODS, nucleus=None)
        draw = ImageDraw.Draw(image)
        for (x0, y0), (x1, y1) in rods:
            draw.line([(x0, y0), (x1, y1)], fill=(55, 40, 80), width=6)
        return segment_spread(np.asarray(image).mean(axis=2), PARAMS)

    # Two parallel rods of one length, 6 px apart: sister chromatids of one chromosome.
    sisters = draw([((480, 60), (480, 100)), ((492, 60), (492, 100))])
    assert sisters.labels[80, 480] == sisters.labels[80, 492] != 0
    # The same rods at right angles, as close: two chromosomes.
    crossing = draw([((480, 60), (480, 100)), ((492, 110), (532, 110))])
    assert crossing.labels[80, 480] != crossing.labels[110, 512]
