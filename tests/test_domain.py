"""The domain check: statistics, the recording of embedding rows, verdicts, and every shipped model's use of it."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import create_app
from config import ROOT
from core import domain
from core.assets import discover, read_spec
from core.errors import AssetError
from core.registry import model_class
from tests.conftest import SVS, config_with, needs
from tests.images import encode, hpa_field, smear


def gaussian_statistics(seed: int = 0) -> domain.DomainStatistics:
    rng = np.random.default_rng(seed)
    training = rng.normal(0, 1, (2000, 8))
    validation = [rng.normal(0, 1, (3, 8)) for _ in range(300)]
    return domain.DomainStatistics.fit(training, validation, 99.0)


def test_rows_like_the_training_rows_are_typical_and_shifted_ones_are_flagged():
    statistics = gaussian_statistics()
    rng = np.random.default_rng(1)
    alike = [domain.verdict(statistics, rng.normal(0, 1, (3, 8)), "m")["typical"] for _ in range(500)]
    shifted = [domain.verdict(statistics, rng.normal(2.5, 1, (3, 8)), "m")["typical"] for _ in range(100)]
    assert 0.95 <= np.mean(alike) < 1.0  # about 1 % flagged by construction
    assert not any(shifted)
    flagged = domain.verdict(statistics, rng.normal(2.5, 1, (3, 8)), "leukocyte")
    assert "leukocyte" in flagged["warning"] and flagged["distance_percentile"] == 100.0


def test_the_percentile_follows_the_distance_and_the_file_round_trips(tmp_path: Path):
    statistics = gaussian_statistics()
    percentiles = [statistics.percentile(d) for d in np.linspace(0, 10, 50)]
    assert percentiles == sorted(percentiles) and percentiles[0] == 0.0 and percentiles[-1] == 100.0
    assert 98.0 < statistics.percentile(statistics.threshold) < 100.0
    path = tmp_path / "domain.npz"
    path.write_bytes(statistics.to_bytes())
    again = domain.DomainStatistics.load(path)
    rows = np.random.default_rng(2).normal(0, 1, (5, 8))
    assert np.allclose(again.distances(rows), statistics.distances(rows), rtol=1e-4)
    assert again.threshold == pytest.approx(statistics.threshold, rel=1e-4)


def test_recordings_nest_and_nothing_is_recorded_outside_them():
    domain.record(np.ones((1, 2)))  # no recording active: dropped
    with domain.recording() as outer:
        domain.record(np.ones((2, 2)))
        with domain.recording() as inner:
            domain.record(np.zeros((3, 2)))
    assert outer.rows.shape == (5, 2) and inner.rows.shape == (3, 2)
    with domain.recording() as empty:
        pass
    assert empty.rows is None
    assert domain.verdict(gaussian_statistics(), empty.rows, "m")["typical"] is None


def test_a_slide_is_judged_by_the_share_of_its_tissue_in_flagged_blocks():
    statistics = gaussian_statistics()
    high, low = statistics.threshold * 2, statistics.threshold / 2
    mostly = domain.slide_verdict(statistics, [high, high, low, None], [100, 50, 50, 10], "metastasis")
    assert mostly["typical"] is False and mostly["share_flagged"] == 0.75 and "75%" in mostly["warning"]
    rarely = domain.slide_verdict(statistics, [high, low, low], [10, 100, 100], "metastasis")
    assert rarely["typical"] is True and "warning" not in rarely
    assert domain.slide_verdict(statistics, [None, None], [5, 5], "m")["typical"] is None


@pytest.fixture(scope="module")
def models():
    loaded = {}
    for model_id in discover(ROOT / "assets"):
        model = model_class(model_id)(read_spec(ROOT / "assets" / model_id))
        model.configure(max_batch=1)
        model.load()
        loaded[model_id] = model
    return loaded


def test_every_shipped_model_has_a_domain_check_with_its_report(models):
    for model_id, model in models.items():
        section = model.spec.meta["domain"]
        assert model.domain is not None, model_id
        assert section["threshold_percentile"] == 99.0 and section["test_inputs"] > 0, model_id
        assert section["catches"] and section["cannot_catch"], model_id
        assert (ROOT / "assets" / model_id / section["file"]).stat().st_size < 1_000_000, model_id


def test_the_embedding_output_leaves_the_probabilities_unchanged(models):
    model = models["leukocyte"]
    batch = np.asarray(smear().resize((160, 160)), np.float32)[None]
    with domain.recording() as seen:
        served = model._run_batches(batch)
    import keras

    network = keras.saving.load_model(model.spec.weights_path, compile=False)  # the shipped file, on TensorFlow
    plain = network(batch, training=False).numpy()
    assert np.allclose(served, plain, atol=1e-4)
    assert seen.rows.shape == (1, model.domain.mean.shape[0])


def test_a_fluorescence_field_sent_to_the_leukocyte_model_is_flagged(models):
    field = hpa_field(size=(320, 240), cells=((100, 120), (220, 120)), radius=45)
    composite = Image.merge("RGB", [field["red"].convert("L"), field["green"].convert("L"), field["blue"].convert("L")])
    model = models["leukocyte"]
    options = {o.name: o.default for o in model.declared_options()}
    answer = model.answer(composite, options)
    assert answer["domain"]["typical"] is False and "leukocyte" in answer["domain"]["warning"]


def test_an_upload_with_nothing_to_analyse_is_checked_on_its_centre(models):
    model = models["leukocyte"]
    options = {o.name: o.default for o in model.declared_options()}
    grey = Image.new("RGB", (320, 240), (128, 128, 128))
    answer = model.answer(grey, options)
    assert answer["predictions"] == [] and answer["domain"]["rows_checked"] == 1
    assert answer["domain"]["typical"] is False


def test_a_changed_statistics_file_stops_start_up(tmp_path: Path):
    shutil.copytree(ROOT / "assets" / "leukocyte", tmp_path / "leukocyte")
    statistics = tmp_path / "leukocyte" / "domain.npz"
    statistics.write_bytes(statistics.read_bytes() + b"\0")
    with pytest.raises(AssetError, match=r"domain\.npz is corrupt"):
        create_app(config_with(assets_dir=tmp_path))


def test_the_answer_carries_domain_and_the_schema_documents_it(client):
    reply = client.post("/model/leukocyte/predict", data={"image": (io.BytesIO(encode(smear())), "smear.png")})
    assert reply.status_code == 200
    verdict = reply.get_json()["domain"]
    assert set(verdict) >= {"typical", "distance_percentile", "threshold_percentile", "rows_checked"}
    swagger = client.get("/swagger.json").get_json()
    assert "domain" in swagger["definitions"]["LeukocyteAnswer"]["properties"]
    assert "typical" in swagger["definitions"]["Domain"]["properties"]


@needs(SVS)
def test_the_skin_slide_is_flagged_for_the_lymph_node_model(models):
    from core.wsi.engine import analyse_local
    from core.wsi.slide import open_slide

    model = models["metastasis"]
    options = {o.name: o.default for o in model.declared_options()}
    result = analyse_local(model, open_slide(SVS), options).result
    assert result["domain"]["typical"] is False and result["domain"]["share_flagged"] > 0.5
    json.dumps(result["domain"])  # plain JSON


def test_noise_is_flagged_by_every_model(models):
    from core.models.protein import Field

    rng = np.random.default_rng(0)
    for model_id, model in models.items():
        options = {o.name: o.default for o in model.declared_options()}
        noise = Field(rng.random((256, 256, 4)).astype(np.float32)) if model_id == "protein" else \
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        verdict = model.answer(noise, options)["domain"]
        assert verdict["typical"] is False and verdict["distance_percentile"] == 100.0, model_id


def test_statistics_of_another_embedding_size_stop_start_up(tmp_path: Path):
    shutil.copytree(ROOT / "assets" / "leukocyte", tmp_path / "leukocyte")
    meta = json.loads((tmp_path / "leukocyte" / "model.json").read_text())
    statistics = gaussian_statistics()  # 8 values, not the network's
    (tmp_path / "leukocyte" / "domain.npz").write_bytes(statistics.to_bytes())
    from core.assets import sha256_of

    meta["domain"]["sha256"] = sha256_of(tmp_path / "leukocyte" / "domain.npz")
    (tmp_path / "leukocyte" / "model.json").write_text(json.dumps(meta))
    model = model_class("leukocyte")(read_spec(tmp_path / "leukocyte"))
    with pytest.raises(AssetError, match="recompute it"):
        model.load()
