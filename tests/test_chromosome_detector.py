"""The chromosome detector: target encoding and decoding, tiled inference, outlines; the shipped detector on
spreads the tests draw and its answer's fields."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from core.models.chromosome import object_shape
from core.outlines import rle
from core.models.chromosome_detector import (CHANNELS, MAX_GAIN, STRIDE, box_overlap, decode, dihedral_output,
                                             encode_targets, grey_levels, median_size, reading_scale,
                                             stitched_output, to_levels)
from core.training.chromosome_detector import WINDOW, PasteOwn, random_window
from tests.images import RODS, encode, spread


def test_decoding_the_targets_gives_back_the_boxes():
    boxes = np.array([(10, 12, 40, 30), (100, 40, 124, 90), (60, 100, 70, 126)], np.float32)
    target = encode_targets(boxes, 128, 160)
    assert target.shape == (32, 40, CHANNELS + 1) and target[..., 5].sum() == len(boxes)
    found = decode(target[..., :CHANNELS], threshold=0.5)
    assert len(found) == len(boxes)
    for detection in found:
        assert min(np.abs(np.asarray(detection.box) - boxes).max(axis=1)) < 1e-3
        assert detection.score == 1.0


def test_a_peak_is_one_detection_however_wide_its_bump():
    output = np.zeros((20, 20, CHANNELS), np.float32)
    yy, xx = np.mgrid[0:20, 0:20]
    output[..., 0] = 0.9 * np.exp(-((xx - 5) ** 2 + (yy - 6) ** 2) / 8) + 0.7 * np.exp(-((xx - 14) ** 2 + (yy - 13) ** 2) / 8)
    output[..., 1:3] = 3.0
    found = decode(output, threshold=0.5)
    assert [tuple(round(v) for v in d.box) for d in found] == [(14, 18, 26, 30), (50, 46, 62, 58)]
    assert [round(d.score, 2) for d in found] == [0.9, 0.7]
    assert decode(output, threshold=0.8)[0].score == pytest.approx(0.9)
    assert len(decode(output, threshold=0.95)) == 0


def cell_means(windows: np.ndarray) -> np.ndarray:
    """A stand-in network: each output cell is the mean colour of its own STRIDE² pixels."""
    n, h, w, _ = windows.shape
    means = windows.reshape(n, h // STRIDE, STRIDE, w // STRIDE, STRIDE, 3).mean(axis=(2, 4))
    return np.concatenate([means, np.zeros(means.shape[:3] + (CHANNELS - 3,), np.float32)], axis=-1)


def test_tiles_stitch_into_the_output_of_one_pass():
    """A forward pass whose output cell depends only on its own STRIDE² pixels: stitched tiles must equal
    it computed on the whole image, whatever the image's size against the tile."""
    rng = np.random.default_rng(0)
    for height, width in ((100, 100), (130, 250), (300, 61)):
        image = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
        whole = stitched_output(cell_means, image, tile=64, margin=16)
        rows, cols = -(-height // STRIDE), -(-width // STRIDE)
        assert whole.shape == (rows, cols, CHANNELS)
        padded = np.empty((rows * STRIDE, cols * STRIDE, 3), np.float32)
        padded[:] = np.median(image.reshape(-1, 3), axis=0)
        padded[:height, :width] = image
        assert np.allclose(whole, cell_means(padded[None])[0], atol=1e-4)


def neighbourhood_means(windows: np.ndarray) -> np.ndarray:
    """A stand-in network that looks around: each output cell is the mean colour of the 3×3 cells around it."""
    from scipy.ndimage import uniform_filter

    out = cell_means(windows)
    out[..., :3] = uniform_filter(out[..., :3], size=(1, 3, 3, 1), mode="nearest")
    return out


def test_beyond_its_border_a_spread_is_read_as_background():
    """A dark object cut by the border must look to the network as it would on a larger, empty field: the
    image is continued with its background, not with its edge pixels drawn outwards."""
    image = np.full((96, 120, 3), 180.0, np.float32)
    image[40:60, 112:] = 40.0  # cut by the right border
    image[88:, 10:30] = 40.0  # and by the bottom one
    whole = stitched_output(neighbourhood_means, image, tile=64, margin=16)
    canvas = np.full((96 + 32, 120 + 32, 3), 180.0, np.float32)
    canvas[16:-16, 16:-16] = image
    on_canvas = stitched_output(neighbourhood_means, canvas, tile=64, margin=16)
    assert np.allclose(whole, on_canvas[4:4 + 24, 4:4 + 30], atol=1e-4)


def test_peaks_whose_boxes_overlap_past_the_limit_are_one_detection():
    """Two peaks on one long object both answer its whole box: with an overlap limit the weaker one goes,
    while a neighbour whose box overlaps less stays."""
    output = np.zeros((30, 30, CHANNELS), np.float32)
    for (row, col), heat, size in (((10, 8), 0.9, 8.0), ((10, 10), 0.7, 8.0), ((22, 22), 0.8, 3.0), ((22, 25), 0.6, 3.0)):
        output[row, col, 0], output[row, col, 1:3] = heat, size
    assert len(decode(output, threshold=0.5)) == 4
    kept = decode(output, threshold=0.5, max_overlap=0.5)
    # boxes of 32 px whose centres are 8 px apart overlap by 0.6; the 12-px boxes 12 px apart not at all
    assert [round(d.score, 1) for d in kept] == [0.9, 0.8, 0.6]
    assert len(decode(output, threshold=0.5, max_overlap=0.7)) == 4


def test_the_ensemble_answers_the_mean_of_its_members():
    from core.models.chromosome_detector import build_detector, ensemble

    members = [build_detector("none") for _ in range(2)]
    members[1].get_layer("heatmap").bias.assign([1.0])  # so that the members differ for sure
    windows = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    mean = np.mean([np.asarray(m.predict(windows, verbose=0)) for m in members], axis=0)
    assert np.allclose(np.asarray(ensemble(members, 64).predict(windows, verbose=0)), mean, atol=1e-5)
    assert not np.allclose(np.asarray(members[0].predict(windows, verbose=0)), mean, atol=1e-3)


def test_dihedral_views_are_turned_back_before_averaging():
    """For a network that turns with its input, the 8 views agree with the plain one; one that does not gets
    its heatmap averaged."""
    image = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32)

    def viewed(forward):  # one 32-px window, the whole image
        return dihedral_output(forward, image, 32, 0, stitched_output(forward, image, 32, 0))

    assert np.allclose(viewed(cell_means), cell_means(image[None])[0], atol=1e-4)

    def top_rows_hot(batch: np.ndarray) -> np.ndarray:
        out = np.zeros(batch.shape[:1] + (8, 8, CHANNELS), np.float32)
        out[:, 0, :, 0] = 1.0  # whatever the input: not equivariant
        out[:, :, :, 1] = 5.0
        return out

    answer = viewed(top_rows_hot)
    heat = answer[..., 0]
    # the top row is hot in 2 of the 8 turned-back views, each edge too; a corner lies on two edges
    assert np.allclose(heat[0, 0], 4 / 8) and np.allclose(heat[0, 3], 2 / 8) and np.allclose(heat[3, 3], 0)
    assert np.allclose(answer[..., 1], 5.0), "the size channels are the plain view's"
    # the quarter turns alone: the top row comes back as each edge once
    heat = dihedral_output(top_rows_hot, image, 32, 0, stitched_output(top_rows_hot, image, 32, 0), views=4)[..., 0]
    assert np.allclose(heat[0, 0], 2 / 4) and np.allclose(heat[0, 3], 1 / 4) and np.allclose(heat[3, 3], 0)
    with pytest.raises(ValueError):
        dihedral_output(top_rows_hot, image, 32, 0, stitched_output(top_rows_hot, image, 32, 0), views=2)


def test_a_window_quiet_in_the_plain_view_is_not_read_again():
    """Only windows whose core has some plain heat are read in the 7 other views; a quiet core keeps its
    plain heat, while a busy one gets the views' mean."""
    image = np.zeros((32, 64, 3), np.float32)
    image[:, 32:] = 255.0  # the right window bright

    seen = []

    def bright_and_rows(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        out = np.zeros(batch.shape[:1] + (8, 8, CHANNELS), np.float32)
        out[..., 0] = batch.mean(axis=(1, 2, 3))[:, None, None] / 255 * 0.02  # 0 left, 0.02 right: quiet
        out[:, 0, :, 0] += 0.5 * (batch.mean(axis=(1, 2, 3)) > 100)[:, None]  # the right one's top row hot
        return out

    plain = stitched_output(bright_and_rows, image, 32, 0)
    assert plain.shape[:2] == (8, 16) and plain[0, 8:, 0].max() > 0.5
    seen.clear()
    viewed = dihedral_output(bright_and_rows, image, 32, 0, plain, quiet_below=0.05)
    assert seen == [1] * 7, "one window (the busy one) in each of the 7 other views"
    assert np.array_equal(viewed[:, :8, 0], plain[:, :8, 0]), "the quiet window keeps its plain heat"
    assert np.isclose(viewed[3, 11, 0], 0.02) and np.isclose(viewed[0, 11, 0], 0.02 + 0.5 * 2 / 8)
    seen.clear()
    dihedral_output(bright_and_rows, image, 32, 0, plain)
    assert seen == [2] * 7, "with no floor every window is read"


def test_a_training_window_keeps_its_boxes_on_the_chromosomes():
    """Scaled, turned and flipped with the window: a box still frames the dark pixels of its rod."""
    rods = ((300, 200, 60, 30), (420, 260, 50, 100))
    rgb = np.asarray(spread(rods=rods, nucleus=None))
    boxes = np.array([(x - 30, y - 30, x + 30, y + 30) for x, y, _, _ in rods], np.float32)
    rng = np.random.default_rng(1)
    seen = 0
    for _ in range(20):
        window, shifted = random_window(rgb, boxes, rng)
        for x0, y0, x1, y1 in shifted:
            centre = window[int((y0 + y1) / 2) - 2:int((y0 + y1) / 2) + 3, int((x0 + x1) / 2) - 2:int((x0 + x1) / 2) + 3]
            assert centre.mean() < window.mean(), "a box centre should sit on its dark rod"
            seen += 1
    assert seen >= 10


def test_a_pasted_chromosome_is_labelled_dark_and_against_a_labelled_neighbour():
    rods = ((60, 60, 50, 20), (150, 120, 60, 70), (90, 190, 40, 130))
    rgb = np.asarray(spread(rods=rods, width=13, nucleus=None))
    boxes = np.array([(x - 32, y - 32, x + 32, y + 32) for x, y, _, _ in rods], np.float32)
    paste, pasted = PasteOwn(), 0
    assert len(paste.donors(rgb, boxes)) == len(rods)
    for seed in range(10):
        window = rgb[:WINDOW, :WINDOW].astype(np.float32)
        before = window.copy()
        labelled = paste(window, boxes, rgb, boxes, 1.0, np.random.default_rng(seed))
        assert np.array_equal(labelled[:len(boxes)], boxes) and (window <= before).all()
        for x0, y0, x1, y1 in labelled[len(boxes):]:
            pasted += 1
            inside = (slice(int(y0), int(np.ceil(y1))), slice(int(x0), int(np.ceil(x1))))
            assert window[inside].mean() < before[inside].mean() - 5, "its pixels were darkened"
            assert max(box_overlap((x0, y0, x1, y1), tuple(b)) for b in boxes) <= 0.3
            gaps = [max(b[0] - x1, x0 - b[2], b[1] - y1, y0 - b[3]) for b in boxes]
            assert min(gaps) <= 8, "it lies against a labelled chromosome (a random place would be far from all)"
    assert pasted >= 5


def test_outline_mask_length_and_orientation_of_a_drawn_rod():
    image = Image.new("L", (200, 120))
    ImageDraw.Draw(image).line([(40, 90), (120, 30)], fill=255, width=7)  # up and to the right
    mask = np.asarray(image) > 0
    shape = object_shape(mask[20:101, 30:131], 30, 20, mask.shape)
    decoded = coco_mask.decode({"size": shape["mask"]["size"], "counts": shape["mask"]["counts"].encode()})
    assert decoded.shape == mask.shape and (decoded.astype(bool) == mask).all()
    xs, ys = zip(*shape["outline"])
    assert 30 <= min(xs) and max(xs) <= 131 and 20 <= min(ys) and max(ys) <= 101
    assert len(shape["outline"]) >= 4
    assert shape["length_px"] == pytest.approx(100, rel=0.15)  # the drawn line is 100 px long
    assert shape["orientation_deg"] == pytest.approx(np.degrees(np.arctan2(60, 80)), abs=4)


def test_a_mask_placed_in_the_image_encodes_as_pycocotools_encodes_the_whole_image():
    rng = np.random.default_rng(7)
    for _ in range(400):  # boxes anywhere, as tall or wide as the image included, empty to full masks
        height, width = (int(v) for v in rng.integers(1, 30, 2))
        rows, columns = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        top, left = int(rng.integers(0, height - rows + 1)), int(rng.integers(0, width - columns + 1))
        inside = rng.random((rows, columns)) < rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])
        whole = np.zeros((height, width), np.uint8)
        whole[top:top + rows, left:left + columns] = inside
        expected = coco_mask.encode(np.asfortranarray(whole))
        assert rle(inside, left, top, (height, width)) == {"size": [height, width],
                                                           "counts": expected["counts"].decode()}
        assert rle(whole) == rle(inside, left, top, (height, width))


def test_the_shipped_detector_counts_drawn_rods_and_not_the_nucleus(client):
    # 13 px wide, as the spreads' chromosomes (two chromatids) are: the segmentation tests' 7-px rods are
    # thinner than anything it learned from; at 11 px the shortest rod peaks at 0.42, under the threshold.
    upload = encode(spread(rods=RODS, width=13))
    body = client.post("/model/chromosome/predict", data={"image": (io.BytesIO(upload), "s.png")},
                       content_type="multipart/form-data").get_json()
    chromosomes = [p for p in body["predictions"] if p["label"] == "chromosome"]
    assert body["counts"]["chromosome"] == len(RODS) == len(chromosomes), body["counts"]
    assert 0.5 <= body["read_at_scale"] <= 0.6  # the boxes below are mapped back from that scale
    for p in chromosomes:
        x, y, w, h = p["bbox"]
        assert any(x <= rx <= x + w and y <= ry <= y + h for rx, ry, _, _ in RODS)
        assert p["length_px"] > 20 and 0 <= p["orientation_deg"] <= 180 and len(p["outline"]) >= 3
        assert p["mask"]["size"] == [480, 640]


def test_a_paler_brighter_spread_reaches_the_detector_at_the_training_levels():
    levels = {"background": 100.0, "stain": 55.0}
    rgb = np.asarray(spread(rods=RODS, nucleus=None, width=11)).astype(np.float32)
    pale = np.clip(250 - (250 - rgb) * 0.6, 0, 255).astype(np.uint8)  # white background, grey stain
    mapped = grey_levels(to_levels(pale, levels))
    assert mapped["background"] == pytest.approx(100, abs=1.5) and mapped["stain"] == pytest.approx(55, abs=2)
    # a field with no stain is not blown up into one: the gain is bounded
    flat = np.full((64, 64, 3), 200, np.uint8)
    flat[::7, ::7] = 196
    assert np.ptp(to_levels(flat, levels)) <= 4 * MAX_GAIN


def test_the_held_out_figures_carry_intervals_over_spreads_that_hold_the_pooled_figure():
    from core.training.chromosome_detector import spread_intervals

    per_spread = {f"spread {k}": {"true": 50, "predicted": 50 + d, "hits": 48, "count_error": abs(d) / 50}
                  for k, d in enumerate((-3, 0, 2, 4, -1))}
    found = spread_intervals(per_spread)
    pooled = 2 * 5 * 48 / sum(s["predicted"] + s["true"] for s in per_spread.values())
    low, high = found["f1_interval_95"]
    assert low < pooled < high <= 1
    low, high = found["count_error_mean_interval_95"]
    assert 0 <= low < 0.04 < high <= 0.08


def test_the_training_command_writes_an_ensemble_that_the_service_reads(tmp_path):
    """A few steps on two drawn spreads: leave-one-spread-out figures for the ensemble and for one member,
    the chosen setting, and a detector file that the model loads and answers with."""
    import json
    import shutil

    from config import ROOT
    from core.assets import read_spec
    from core.registry import model_class
    from core.training import chromosome_detector as training

    data = tmp_path / "metaphases"
    for folder in ("images", "labels"):
        (data / folder).mkdir(parents=True)
    for index in range(2):
        spread(rods=RODS, seed=index, width=11).save(data / "images" / f"{index}.png")
        lines = [f"0 {x / 640:.4f} {y / 480:.4f} {56 / 640:.4f} {56 / 480:.4f}" for x, y, _, _ in RODS]
        (data / "labels" / f"{index}.txt").write_text("\n".join(lines))
    assets = tmp_path / "assets"
    shutil.copytree(ROOT / "assets" / "chromosome", assets / "chromosome")

    training.main(["--data", str(data), "--weights", "none", "--steps", "10", "--seeds", "3", "4",
                   "--assets", str(assets)])
    meta = json.loads((assets / "chromosome" / "model.json").read_text())
    detector, figures = meta["detector"], meta["metrics"]["detector"]
    assert detector["members"] == 2 and detector["training"]["seeds"] == [3, 4]
    assert (detector["threshold"], detector["max_overlap"]) in training.SETTINGS
    assert figures["spreads"] == 2 and set(figures["per_spread"]) == {"spread 0", "spread 1"}
    assert {"without_tta", "one_detector"} <= set(figures)

    model = model_class("chromosome")(read_spec(assets / "chromosome"))
    model.configure(max_batch=4)
    model.load()
    answer = model.answer(model.read_inputs({"image": encode(spread(rods=RODS, width=11))}, 10_000_000),
                          {"mode": "spread"})
    assert set(answer["counts"]) == {"chromosome", "non_chromosome"}


def test_a_spread_of_smaller_chromosomes_is_read_at_a_larger_scale_up_to_the_largest():
    assert median_size([(0, 0, 10, 40), (0, 0, 30, 30), (5, 5, 25, 25)]) == pytest.approx(20)
    assert median_size([]) == 0
    assert reading_scale(36.2, 0.5, 36.2, 0.6) == pytest.approx(0.5)
    assert reading_scale(33.0, 0.5, 36.2, 0.6) == pytest.approx(0.5 * 36.2 / 33.0)  # enlarged to the reference
    assert reading_scale(25.0, 0.5, 36.2, 0.6) == pytest.approx(0.6)  # no further than the largest scale
    assert reading_scale(50.0, 0.5, 36.2, 0.6) == pytest.approx(0.5)  # larger chromosomes are not shrunk
    assert reading_scale(0.0, 0.5, 36.2, 0.6) == pytest.approx(0.5)  # nothing found: the detector's scale


def test_a_spread_read_larger_averages_the_views_model_json_names_and_the_base_scale_all_eight():
    from config import ROOT
    from core.assets import read_spec
    from core.registry import model_class

    model = model_class("chromosome")(read_spec(ROOT / "assets" / "chromosome"))
    spec = model.detector_spec
    calls = []

    def counting(windows: np.ndarray) -> np.ndarray:
        calls.append(len(windows))
        return cell_means(windows)  # no window is quiet: mean colours are far above the floor

    model._companion_forwards["detector"] = counting
    seen = np.full((200, 300, 3), 120, np.uint8)
    for scale, views in ((spec["scale"], 8), (spec["max_scale"], spec["enlarged_views"])):
        plain = model.detector_output(seen, scale)
        calls.clear()
        model.detector_output(seen, scale, plain)
        assert len(calls) == views - 1, (scale, calls)
    assert spec["enlarged_views"] == 4


def test_the_training_spreads_reference_size_is_the_mean_of_their_median_boxes():
    from core.training.chromosome_detector import reference_size

    small = np.array([[0, 0, 20, 20], [0, 0, 20, 20], [0, 0, 40, 40]], float)
    large = np.array([[0, 0, 40, 40], [0, 0, 40, 40]], float)
    assert reference_size([(None, small), (None, large)]) == pytest.approx(30)


def test_boxes_are_mapped_back_from_the_scale_each_spread_was_read_at():
    from core.training.chromosome_detector import Reading, boxes_at

    output = np.zeros((20, 20, CHANNELS), np.float32)
    output[5, 8] = (0.9, 2.0, 3.0, 0.5, 0.5)  # a peak: box 8×12 px of the network's input, centred at (34, 22)
    for scale in (0.5, 0.6):
        (x0, y0, x1, y1), = boxes_at(Reading(output, scale), (0.45, 0.3))
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((34 / scale, 22 / scale))
        assert (x1 - x0, y1 - y0) == pytest.approx((8 / scale, 12 / scale))
