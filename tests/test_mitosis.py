"""The mitosis model: candidates, merging and matching, the API answer and its pictures, slides, training data."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage.color import rgb2hed

from core.assets import read_spec
from core.evaluation import match_points
from core.models.mitosis import MitosisModel, dense_centres, hematoxylin, merge_duplicates, propose
from core.models.mitosis_training import MitosisTraining, read_figures
from core.tta import dihedral_mean
from core.wsi.engine import analyse_local
from core.wsi.slide import open_slide
from tests.conftest import SHARED, needs
from tests.images import encode, pyramid_tiff
from tests.test_jobs import wait_for

MITOSIS_DATA = SHARED / "data" / "mitosis"
SPEC = read_spec(Path(__file__).resolve().parent.parent / "assets" / "mitosis")
BLOBS = ((40, 50), (150, 60), (90, 160), (200, 190))  # (x, y) of dark nuclei


def he_field(size=(256, 240), blobs=BLOBS, radius=9) -> Image.Image:
    """Pink stroma with dark purple round nuclei at ``blobs``."""
    image = Image.new("RGB", size, (232, 182, 212))
    draw = ImageDraw.Draw(image)
    for x, y in blobs:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(70, 35, 110))
    return image


def post(client, image: Image.Image, **fields):
    data = {"image": (io.BytesIO(encode(image)), "field.png"), **{k: str(v) for k, v in fields.items()}}
    return client.post("/model/mitosis/predict", data=data, content_type="multipart/form-data")


def test_haematoxylin_channel_is_scikit_images():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    assert np.allclose(hematoxylin(rgb), rgb2hed(rgb)[..., 0], atol=1e-4)


def test_candidates_are_the_dark_nuclei():
    centres = propose(np.asarray(he_field()), SPEC.meta["input"]["proposals"])
    found = {(x, y) for x, y in BLOBS if np.hypot(centres[:, 1] - x, centres[:, 0] - y).min() <= 3}
    assert found == set(BLOBS) and len(centres) == len(BLOBS)
    assert len(propose(np.full((64, 64, 3), 232, np.uint8), SPEC.meta["input"]["proposals"])) == 0  # glass: none


def test_duplicates_within_the_radius_keep_the_most_probable():
    points = np.array([[0, 0], [10, 10], [100, 100], [0, 25]], float)
    kept = merge_duplicates(points, np.array([0.6, 0.9, 0.7, 0.5]), radius=30)
    assert sorted(kept.tolist()) == [1, 2]


def test_matching_is_one_to_one_within_the_radius():
    truth = np.array([[50, 50], [200, 200]], float)
    found = np.array([[55, 52], [45, 48], [260, 200]], float)  # two near the first, one 60 px off the second
    pairs = match_points(found, truth, 30)
    assert len(pairs) == 1 and pairs[0][1] == 0
    assert match_points(np.zeros((0, 2)), truth, 30) == []


def test_dense_centres_cover_the_image_at_the_stride():
    centres = dense_centres((100, 64), 16)
    assert len(centres) == 6 * 4 and centres.min() == 8 and centres[:, 0].max() == 8 + 16 * 5


def test_every_prediction_has_a_position_probability_and_subtype(client):
    image = he_field()
    body = post(client, image, threshold=0).get_json()
    assert body["candidates"] == len(BLOBS) and body["count"] == len(body["predictions"]) == len(BLOBS)
    for mitosis in body["predictions"]:
        assert 0 <= mitosis["x"] < image.width and 0 <= mitosis["y"] < image.height
        assert 0 <= mitosis["probability"] <= 1 and mitosis["subtype"] in ("normal", "atypical")
        assert 0.5 <= mitosis["subtype_probability"] <= 1
    assert body["counts"]["normal"] + body["counts"]["atypical"] == body["count"]
    area_mm2 = image.width * image.height * 0.25 ** 2 / 1e6
    assert body["field"]["area_mm2"] == pytest.approx(area_mm2, rel=1e-3)
    assert body["mitoses_per_mm2"] == pytest.approx(body["count"] / area_mm2, rel=1e-2)
    assert post(client, image, threshold=1).get_json()["count"] == 0
    probabilities = [m["probability"] for m in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_a_64_px_patch_and_glass_are_answered(client):
    patch = he_field((64, 64), blobs=((32, 32),))
    assert post(client, patch, threshold=0).get_json()["count"] == 1
    glass = post(client, Image.new("RGB", (300, 300), (240, 240, 240))).get_json()
    assert glass["count"] == 0 and glass["candidates"] == 0 and glass["mitoses_per_mm2"] == 0


def test_mpp_rescales_to_40x_and_answers_in_upload_pixels(client):
    half = he_field((128, 120), blobs=[(x // 2, y // 2) for x, y in BLOBS], radius=5)  # the field at 0.5 um/px
    body = post(client, half, mpp=0.5, threshold=0).get_json()
    assert body["field"]["mpp"] == 0.5 and body["count"] == len(BLOBS)
    for mitosis in body["predictions"]:
        assert min(np.hypot(mitosis["x"] - x // 2, mitosis["y"] - y // 2) for x, y in BLOBS) <= 3


def test_png_marks_the_mitoses_and_geojson_has_points(client):
    image = he_field()
    response = post(client, image, format="png", threshold=0)
    assert response.status_code == 200 and response.mimetype == "image/png"
    drawn = Image.open(io.BytesIO(response.data)).convert("RGB")
    assert drawn.width == image.width and drawn.height > image.height  # plus the summary strip
    strip = drawn.height - image.height
    marked = np.asarray(drawn)[strip:]
    x, y = BLOBS[0]
    ring = marked[y - 40:y + 40, x - 40:x + 40].reshape(-1, 3)
    assert any(tuple(p) in {(0, 158, 115), (213, 94, 0)} for p in ring)  # a subtype-coloured circle
    response = post(client, image, format="geojson", threshold=0)
    document = json.loads(response.data)
    assert response.mimetype == "application/geo+json" and len(document["features"]) == len(BLOBS)
    for feature in document["features"]:
        assert feature["geometry"]["type"] == "Point"
        assert feature["properties"]["classification"]["name"].startswith("Mitosis: ")


def test_views_are_averaged_only_for_windows_that_may_be_mitoses(app, monkeypatch):
    model = app.extensions["mmax_registry"].models["mitosis"]
    rgb = np.asarray(he_field())
    batch = model.network_windows(rgb, propose(rgb, SPEC.meta["input"]["proposals"])).astype(np.float32)
    plain, averaged = model._run_batches(batch), dihedral_mean(model._run_batches, batch)
    monkeypatch.setitem(model.spec.meta["inference"], "tta_above", 0.0)  # every window is doubtful
    assert np.allclose(model.run_network(batch), averaged, atol=1e-5)
    monkeypatch.setitem(model.spec.meta["inference"], "tta_above", 1.1)  # none is
    assert np.allclose(model.run_network(batch), plain, atol=1e-5)


def test_the_tta_cut_off_is_the_highest_that_keeps_validation_f1_at_every_threshold(monkeypatch, tmp_path):
    """calibrate's rule on made-up validation F1s: averaging views only above 0.3 loses 0.001 at most
    (kept), above 0.4 it loses 0.01 at threshold 0.5 (not kept, though F1 at 0.9 is unchanged); the
    threshold is the best of the table served with the chosen cut-off."""
    import core.models.mitosis_training as training

    model = MitosisModel(read_spec(SPEC.directory))
    recipe = MitosisTraining(model)
    loss_at_half = {0.0: 0.0, 0.02: 0.0, 0.05: 0.0, 0.1: 0.0, 0.2: 0.0005, 0.3: 0.001, 0.4: 0.01, 0.5: 0.02}

    def on_mosaics(chosen, images, threshold):
        cut = model.spec.meta["inference"]["tta_above"]
        table = {str(t): 0.7 + t / 5 for t in training.THRESHOLDS}
        table["0.5"] -= loss_at_half[cut]
        return {"by_threshold": table}

    monkeypatch.setattr(training, "crops", lambda data_dir: iter(()))
    monkeypatch.setattr(recipe, "on_mosaics", on_mosaics)
    chosen = recipe.calibrate(tmp_path, set())
    assert chosen["inference"]["tta_above"] == model.spec.meta["inference"]["tta_above"] == 0.3
    assert chosen["inference"]["validation_f1_loss_by_tta_above"]["0.4"] == 0.01
    assert chosen["defaults"]["threshold"] == 0.9


@pytest.mark.parametrize("fields, message", [
    ({"mpp": "-1"}, "between"), ({"threshold": "2"}, "between"), ({"format": "svg"}, "one of"),
    ({"mpp": "nan"}, "number"),
])
def test_bad_options_are_400(client, fields, message):
    response = post(client, he_field((64, 64)), **fields)
    assert response.status_code == 400 and message in response.get_json()["message"]


def test_a_field_too_large_for_one_request_points_to_jobs(client):
    response = post(client, Image.new("RGB", (1100, 1000), (232, 182, 212)), mpp=1.0)  # 4,400x4,000 at 40x
    assert response.status_code == 400 and "job" in response.get_json()["message"]


NUCLEI = [(x, y) for x in range(180, 880, 120) for y in range(180, 1080, 150)]


def slide_with_nuclei(path: Path) -> Path:
    """A 40x pyramid: tissue with dark nuclei at NUCLEI on the left, glass on the right."""
    rgb = np.full((1200, 1400, 3), 244, np.uint8)
    field = np.asarray(he_field((1400, 1200), blobs=NUCLEI))
    rgb[100:1100, 100:900] = field[100:1100, 100:900]
    pyramid_tiff(path, rgb, mpp=0.25)
    return path


def test_a_whole_slide_counts_mitoses_in_tissue_only(app, tmp_path):
    model = app.extensions["mmax_registry"].models["mitosis"]
    nuclei = NUCLEI
    path = slide_with_nuclei(tmp_path / "slide.tif")
    notes = []
    analysis = analyse_local(model, open_slide(path), {"mpp": 0.0, "threshold": 0.0},
                             lambda fraction, note: notes.append(fraction))
    result = analysis.result
    assert notes[-1] == pytest.approx(1.0) and result["count"] == len(nuclei)
    found = np.array([(m["x"], m["y"]) for m in result["predictions"]])
    assert all(np.hypot(*(found - n).T).min() <= 3 for n in nuclei)  # level-0 positions
    assert 0 < result["tissue_area_mm2"] < 1400 * 1200 * 0.25 ** 2 / 1e6
    assert result["hotspot"]["count"] >= 1 and len(analysis.geojson["features"]) == len(nuclei)
    assert analysis.heatmap.width > 0
    # per 10 high-power fields of the stated area, and a hotspot of 10 HPF placed over the figures
    assert result["mitoses_per_10_hpf"] == pytest.approx(result["mitoses_per_mm2"] * 10 * result["hpf"]["area_mm2"],
                                                         rel=1e-3)
    left, top, right, bottom = result["hotspot"]["box"]
    assert 0 <= left < right <= 1400 and 0 <= top < bottom <= 1200  # level-0 pixels, within the slide
    assert (right - left) * 0.25 / 1000 <= math.sqrt(result["hotspot"]["area_mm2"]) + 1e-6
    inside = [left <= x < right and top <= y < bottom for x, y in nuclei]
    assert sum(inside) == result["hotspot"]["count"]


def test_the_slide_heatmap_marks_each_figure(app, tmp_path):
    """The heatmap shows the figures themselves, in their subtype's colour, over the density colours."""
    model = app.extensions["mmax_registry"].models["mitosis"]
    slide = open_slide(slide_with_nuclei(tmp_path / "slide.tif"))
    plain = analyse_local(model, slide, {"mpp": 0.0, "threshold": 1.01}, lambda *_: None).heatmap
    marked = analyse_local(model, slide, {"mpp": 0.0, "threshold": 0.0}, lambda *_: None)
    picture = np.asarray(marked.heatmap.convert("RGB")).reshape(-1, 3)
    colours = {tuple(model.colour(m["subtype"])) for m in marked.result["predictions"]}
    unmarked = np.asarray(plain.convert("RGB")).reshape(-1, 3)
    assert plain.size == marked.heatmap.size and colours
    assert all(np.all(picture == colour, axis=1).sum() >= 4 > np.all(unmarked == colour, axis=1).sum()
               for colour in colours)


def test_a_slide_job_answers_points(client, tmp_path):
    path = slide_with_nuclei(tmp_path / "slide.tif")
    response = client.post("/model/mitosis/jobs", data={"slide": (io.BytesIO(path.read_bytes()), "slide.tif"),
                                                        "threshold": "0"}, content_type="multipart/form-data")
    assert response.status_code == 202
    done = wait_for(client, response.get_json()["id"])
    assert done["status"] == "done", done["message"]
    result = client.get(done["links"]["result"]).get_json()
    assert result["count"] == len(NUCLEI) and result["slide"]["mpp"] == 0.25
    document = json.loads(client.get(done["links"]["geojson"]).data)
    assert {f["geometry"]["type"] for f in document["features"]} == {"Point"}


def write_crop_set(root: Path) -> None:
    """Two crops of one slide whose windows overlap (each sees the other's figure) and one of another slide."""
    rows = [("s1.tiff", "TUPAC16", "1", 1000, 1000, "False"), ("s1.tiff", "TUPAC16", "2", 1040, 1030, "True"),
            ("s2.tiff", "MIDOG21", "3", 500, 500, "False")]
    with open(root / "amibr.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide", "dataset", "uid", "x", "y", "majority_atypical"])
        writer.writerows(rows)
    for slide, dataset, uid, x, y, atypical in rows:
        folder = root / "patches" / ("atypical" if atypical == "True" else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        blobs = [(64, 64)] + [(64 + ox - x, 64 + oy - y) for s, _, u, ox, oy, _ in rows
                              if s == slide and u != uid and abs(ox - x) < 64 and abs(oy - y) < 64]
        he_field((128, 128), blobs=blobs + [(10, 110)]).save(folder / f"{dataset}_{uid}.jpg")


def test_training_windows_positives_at_figures_negatives_away_from_every_figure(tmp_path):
    write_crop_set(tmp_path)
    model = MitosisModel(SPEC)
    examples = list(MitosisTraining(model).examples(tmp_path))
    names = SPEC.label_names
    by_group = {group for _, _, group in examples}
    assert by_group == {"TUPAC16/s1.tiff", "MIDOG21/s2.tiff"}
    labels = [names[label] for _, label, _ in examples]
    sampling = SPEC.meta["input"]["training_sampling"]
    per_figure = 1 + sampling["shifted"] + sampling["degraded"]  # centred, shifted, at 20x sharpness
    assert labels.count("atypical") == per_figure
    assert labels.count("normal") == 2 * per_figure
    assert "non_mitosis" in labels
    assert all(x.shape == tuple(SPEC.meta["input"]["network_input"]) for x, _, _ in examples)


@needs(MITOSIS_DATA)
def test_shipped_model_finds_figures_on_held_out_slides(client):
    """Crops of slides the shipped model never saw (model.json's held-out slides): most centre figures found."""
    held_out = set(SPEC.meta["metrics"]["detection"]["per_group"])
    figures = read_figures(MITOSIS_DATA)
    paths = [path for subtype in ("normal", "atypical")
             for path in sorted((MITOSIS_DATA / "patches" / subtype).glob("*.jpg"))
             if figures[path.stem].slide in held_out]
    sample = paths[::max(1, len(paths) // 60)][:60]
    found = 0
    for path in sample:
        body = post(client, Image.open(path)).get_json()
        found += any(np.hypot(m["x"] - 64, m["y"] - 64) <= 30 for m in body["predictions"])
    assert len(sample) >= 30 and found / len(sample) >= 0.6


def test_command_line_runs_a_slide(tmp_path):
    from core.wsi.__main__ import main as wsi_main

    path = slide_with_nuclei(tmp_path / "slide.tif")
    out = tmp_path / "out"
    assert wsi_main(["predict", str(path), "--model", "mitosis", "--option", "threshold=0", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["count"] == len(NUCLEI) and result["engine"] == "local"
    assert json.loads((out / "regions.geojson").read_text())["features"][0]["geometry"]["type"] == "Point"


def test_hard_negatives_come_from_the_mined_part_only(tmp_path):
    """The region without mitoses is split by rows: every candidate of the mined (top) part trains as
    non-mitosis, and no pixel of the reported (bottom) part is in any training window, not even at the cut."""
    rng = np.random.default_rng(0)
    top = [(int(x), int(y)) for x, y in zip(rng.integers(20, 380, 12), rng.integers(20, 140, 12))]
    bottom = [(int(x), int(y)) for x, y in zip(rng.integers(20, 380, 12), rng.integers(160, 280, 12))]
    rgb = np.asarray(he_field((400, 300), blobs=top + bottom)).copy()
    rgb[150:] = np.where(rgb[150:] == (232, 182, 212), (40, 240, 40), (20, 120, 20))  # the reported part: green
    (tmp_path / "mitosis").mkdir()
    pyramid_tiff(tmp_path / "skin.tif", rgb, mpp=0.25, levels=1)
    meta = json.loads(json.dumps(SPEC.meta))
    meta["input"]["training_sampling"]["hard_negatives"] = {"slide": "../skin.tif", "mined_share": 0.5}
    spec = read_spec(SPEC.directory)
    spec.meta.update(meta)
    recipe = MitosisTraining(MitosisModel(spec))
    mined = list(recipe.hard_negatives(tmp_path / "mitosis"))
    assert len(mined) >= len(top) - 2  # every nucleus of the top part is a candidate (a few may touch)
    assert {label for _, label, _ in mined} == {SPEC.label_names.index("non_mitosis")}
    assert recipe.training_only(np.array([group for _, _, group in mined])).all()
    windows = np.stack([x for x, _, _ in mined]).astype(int)
    green = (windows[..., 1] > windows[..., 0] + 60) & (windows[..., 1] > windows[..., 2] + 30)
    assert not green.any()


def subtype_spec_copy(**subtype):
    """The shipped spec with its ``subtype`` section changed (a copy: the shipped one is untouched)."""
    spec = read_spec(SPEC.directory)
    spec.meta.update(json.loads(json.dumps(SPEC.meta)))
    spec.meta["subtype"].update(subtype)
    return spec


def darkness_network(side: int):
    """A stand-in subtype classifier: the darker a window, the more 'atypical'."""
    import keras

    inputs = keras.Input((side, side, 3))
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    darkness = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(1 / 3), use_bias=False)(1 - mean)
    atypical = keras.layers.Activation("sigmoid")(keras.layers.Rescaling(20, offset=-4)(darkness))
    return keras.Model(inputs, keras.layers.Concatenate()([1 - atypical, atypical]))


def test_the_subtype_classifier_decides_each_found_mitosis(tmp_path):
    """With a subtype classifier, each mitosis's subtype comes from the window centred on it, at the cut-off
    model.json gives; without one, the detector's own split answers."""
    spec = subtype_spec_copy(atypical_at=0.5)
    model = MitosisModel(spec)
    model.use_companion_network("subtype", darkness_network(spec.meta["subtype"]["network_input"][0]))
    pale, dark = he_field((256, 128), blobs=[(64, 64)], radius=6), he_field((256, 128), blobs=[(192, 64)], radius=30)
    rgb = np.concatenate([np.asarray(pale)[:, :128], np.asarray(dark)[:, 128:]], axis=1)
    found = [{"x": 64, "y": 64, "subtype": "atypical", "subtype_probability": 0.9},
             {"x": 192, "y": 64, "subtype": "normal", "subtype_probability": 0.9}]
    model.assign_subtypes(rgb, found)
    assert [m["subtype"] for m in found] == ["normal", "atypical"]
    windows = model.subtype_windows(rgb, np.array([(64, 64), (64, 192)]))
    p = model.atypical_probability(windows)
    assert found[0]["subtype_probability"] == pytest.approx(1 - p[0], abs=1e-4)
    assert found[1]["subtype_probability"] == pytest.approx(p[1], abs=1e-4)
    strict = MitosisModel(subtype_spec_copy(atypical_at=float(p[1]) + 0.01))  # a cut-off above the dark one's
    strict.use_companion_network("subtype", darkness_network(spec.meta["subtype"]["network_input"][0]))
    strict.assign_subtypes(rgb, found)
    assert [m["subtype"] for m in found] == ["normal", "normal"]


def test_subtype_training_uses_the_detectors_split_and_records_its_weights(tmp_path):
    """The subtype classifier trains on the detector's training slides only, picks its cut-off on the validation
    slides and writes weights whose sha256 model.json records (and serving verifies)."""
    from core.assets import sha256_of
    from core.training.trainer import TrainSettings

    write_crop_set(tmp_path)
    spec = subtype_spec_copy(sampling={"shift_px": 4, "shifted": 1, "epochs": 1, "stain_sigma": 0.05})
    recipe = MitosisTraining(MitosisModel(spec))
    settings = TrainSettings(model_id="mitosis", data=tmp_path, out=tmp_path / "out", assets_dir=tmp_path,
                             batch_size=4)
    groups = {"train": {"TUPAC16/s1.tiff"}, "val": {"MIDOG21/s2.tiff"}, "test": set()}
    section = recipe.train_companions(settings, groups)["subtype"]
    weights = tmp_path / "out" / section["weights"]["file"]
    assert section["weights"]["sha256"] == sha256_of(weights) and 0.2 <= section["atypical_at"] <= 0.8
    assert set(section["validation_balanced_accuracy_by_cut"]) >= {"0.50"}
    x, y, slides, centred = recipe.subtype_examples(tmp_path)
    assert len(x) == 3 * 2 and centred.sum() == 3 and sorted(y[centred].tolist()) == [0, 0, 1]
    found = [{"x": 64, "y": 64, "subtype": "normal", "subtype_probability": 1.0}]
    recipe.model.assign_subtypes(np.asarray(he_field((128, 128), blobs=[(64, 64)])), found)
    atypical = found[0]["subtype_probability"] if found[0]["subtype"] == "atypical" else 1 - found[0]["subtype_probability"]
    # subtype_probability is rounded to 4 decimals: a probability within that of the cut-off may read either way
    assert (atypical >= section["atypical_at"]) == (found[0]["subtype"] == "atypical") \
        or abs(atypical - section["atypical_at"]) <= 5e-5
