"""Inputs that used to be silently misread or refused: rotated photos, LZW TIFFs, resize past the pixel limit,
browsers behind an API key, huge option values."""
from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from tests.conftest import TEST_CONFIG, config_with, make_app
from tests.images import encode, hpa_field, smear


def post(client, model="leukocyte", files=None, **form):
    data = {name: (io.BytesIO(content), f"{name}.bin") for name, content in (files or {}).items()}
    data.update(form)
    return client.post(f"/model/{model}/predict", data=data, content_type="multipart/form-data")


def test_a_photo_stored_on_its_side_is_analysed_upright(client):
    upright = smear(size=(240, 320), leukocytes=((120, 220, 30),))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a camera stores it: 320 x 240
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif)
    body = post(client, files={"image": buffer.getvalue()}).get_json()
    plain = post(client, files={"image": encode(upright, "JPEG")}).get_json()
    assert body["image"] == {"width": 240, "height": 320, "exif_orientation": 6}
    assert len(body["predictions"]) == len(plain["predictions"]) == 1
    x, y, w, h = body["predictions"][0]["bbox"]
    assert x <= 120 <= x + w and y <= 220 <= y + h  # in the upright frame, where the cell is


def test_lzw_compressed_channel_tiffs_decode(client):
    import tifffile

    field = hpa_field()
    stack = np.stack([np.asarray(field[name]) for name in ("red", "green", "blue", "yellow")])
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack, photometric="minisblack", compression="lzw")
    response = post(client, "protein", files={"image": buffer.getvalue()})
    assert response.status_code == 200 and response.get_json()["cell_count"] == 2


def test_a_resize_past_the_pixel_limit_is_a_413_that_says_why(client):
    side = int((TEST_CONFIG.max_image_pixels * 0.6) ** 0.5)  # within the limit as uploaded
    upload = encode(Image.new("RGB", (side, side), (236, 226, 232)))
    assert post(client, files={"image": upload}).status_code == 200
    response = post(client, files={"image": upload}, scale="2")
    assert response.status_code == 413 and "with scale=2" in response.get_json()["message"]


def test_a_browser_preflight_is_answered_before_the_api_key():
    client = make_app(config_with(api_key="s3cret", cors=True)).test_client()
    preflight = client.options("/model/leukocyte/predict", headers={
        "Origin": "https://lims.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key"})
    assert preflight.status_code == 200 and preflight.headers.get("Access-Control-Allow-Origin")
    assert client.post("/model/leukocyte/predict", headers={"Origin": "https://lims.example"}).status_code == 401


def test_a_huge_option_value_is_not_echoed_whole(client):
    response = post(client, files={"image": encode(smear())}, scale="9" * 400_000)
    message = response.get_json()["message"]
    assert response.status_code == 400 and len(message) < 300 and "400,000 characters" in message


def test_messages_name_files_not_where_the_server_keeps_them():
    from core.errors import ClientError, without_host_paths

    assert without_host_paths("/var/lib/mmax/jobs/ab12/slide.svs: not a TIFF") == "slide.svs: not a TIFF"
    assert without_host_paths("slide path 'cases/sub/a.svs' leaves the slide root") == \
        "slide path 'cases/sub/a.svs' leaves the slide root"
    assert ClientError("cannot open /tmp/x/y.tif at 0.25 um/px").message == "cannot open y.tif at 0.25 um/px"


def test_a_refused_slide_upload_says_why_without_host_paths(tmp_path):
    client = make_app(config_with(models=("metastasis",), data_dir=tmp_path / "data")).test_client()
    response = client.post("/model/metastasis/jobs", data={"slide": (io.BytesIO(b"not a slide"), "x.svs")},
                           content_type="multipart/form-data")
    message = response.get_json()["message"]
    assert response.status_code == 415 and "x.svs" in message and str(tmp_path) not in message


def test_two_servers_on_one_host_keep_their_metrics_apart():
    import os
    import subprocess
    import sys

    from config import ROOT

    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    code = "import os, runpy; runpy.run_path('gunicorn.conf.py'); print(os.environ['PROMETHEUS_MULTIPROC_DIR'])"
    folders = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)]
    try:
        assert folders[0] != folders[1] and all(os.path.isdir(folder) for folder in folders)
    finally:
        for folder in folders:
            os.rmdir(folder)


def test_request_ids_and_sample_ids_are_carried_through(client):
    files = {"image": (io.BytesIO(encode(smear())), "a.png")}
    response = client.post("/model/leukocyte/predict", data={**files, "sample_id": "LIMS-2026-00042"},
                           headers={"X-Request-ID": "lab-7f3a"}, content_type="multipart/form-data")
    body = response.get_json()
    assert response.headers["X-Request-ID"] == body["request_id"] == "lab-7f3a"
    assert body["sample_id"] == "LIMS-2026-00042" and body["model"] == "leukocyte"
    meta = client.get("/model/leukocyte/metadata").get_json()
    assert body["version"] == meta["version"] and len(body["weights_sha256"]) == 64
    made = client.get("/health/live", headers={"X-Request-ID": "has spaces\tand \"quotes\" " + "x" * 200})
    assert len(made.headers["X-Request-ID"]) == 32  # not a plain token: replaced by a fresh one
    bad = client.post("/model/leukocyte/predict", data={"image": (io.BytesIO(encode(smear())), "a.png"),
                                                        "sample_id": "x" * 200}, content_type="multipart/form-data")
    assert bad.status_code == 400 and "sample_id" in bad.get_json()["message"] and bad.headers["X-Request-ID"]


def test_a_model_at_its_admission_limit_answers_503_at_once_and_recovers(monkeypatch):
    import threading
    import time

    app = make_app(config_with(queue_max=1))
    client = app.test_client()
    model = app.extensions["mmax_registry"].get_ready("leukocyte")
    release, entered = threading.Event(), threading.Event()
    original = model.predict

    def slow_predict(inputs, options):
        entered.set()
        release.wait(30)
        return original(inputs, options)

    monkeypatch.setattr(model, "predict", slow_predict)
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(response=post(client, files={"image": encode(smear())})))
    worker.start()
    assert entered.wait(30)
    started = time.monotonic()
    busy = post(app.test_client(), files={"image": encode(smear())})
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1" and time.monotonic() - started < 5
    assert "MMAX_QUEUE_MAX" in busy.get_json()["message"]
    assert app.test_client().get("/health/live").status_code == 200
    release.set()
    worker.join(30)
    assert first["response"].status_code == 200
    assert post(client, files={"image": encode(smear())}).status_code == 200  # admitted again
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'mmax_rejected_total{model="leukocyte"}' in metrics and "mmax_queue_seconds_count" in metrics


def test_a_request_over_its_time_budget_stops_with_a_503_and_the_next_is_served(caplog):
    from core import deadline

    with deadline.budget(None):
        deadline.check()  # no budget: never stops
    slow = make_app(config_with(request_timeout_s=1e-6)).test_client()  # make_app waits for the models
    response = post(slow, files={"image": encode(smear())})
    assert response.status_code == 503 and "MMAX_REQUEST_TIMEOUT_S" in response.get_json()["message"]
    region = post(slow, "metastasis", files={"image": encode(Image.new("RGB", (1024, 1024), (230, 180, 210)))},
                  tissue_only="false")
    assert region.status_code == 503  # stopped between blocks of the region's grid
    # a deliberate 503 is not logged as a crash
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.records
    assert slow.get("/health/live").status_code == 200
    assert post(make_app(config_with()).test_client(), files={"image": encode(smear())}).status_code == 200


def test_a_large_request_leaves_none_of_its_arrays_behind(client):
    """After a smear with 100 leukocytes (8 views each: 250 MB as one float32 stack) nothing of it stays
    referenced: the micro-batcher used to keep the last request's whole array until the next request came."""
    import tracemalloc

    crowded = encode(smear((2000, 2000), leukocytes=[(x, y, 30) for x in range(100, 2000, 200)
                                                      for y in range(100, 2000, 200)]))
    post(client, files={"image": crowded})  # warm: first-call caches are not what this is about
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        response = post(client, files={"image": crowded})
        assert response.status_code == 200 and len(response.get_json()["predictions"]) == 100
        del response
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept - before < 20 * 2**20, f"{(kept - before) / 2**20:.0f} MB still referenced"
    assert peak - before < 200 * 2**20, f"peak {(peak - before) / 2**20:.0f} MB"  # chunks, not one stack


def test_the_memory_budget_refuses_what_cannot_fit_and_queues_what_must_wait():
    import threading
    import time

    import pytest

    from core import deadline
    from core.errors import ImageTooLarge
    from core.memory import MemoryBudget, MemoryBusy

    budget = MemoryBudget(request_bytes=100, worker_bytes=150)
    with pytest.raises(ImageTooLarge, match="MMAX_REQUEST_MEMORY_MB"):
        with budget.reserve(101, "this image"):
            pass
    order = []
    with budget.reserve(100, "the first"):
        def second():
            with budget.reserve(60, "the second"):  # 160 > 150: waits for the first
                order.append("second")

        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.2)
        order.append("first done")
        with deadline.budget(0.2), pytest.raises(MemoryBusy, match="MMAX_WORKER_MEMORY_MB"):
            with budget.reserve(60, "a third, with its time budget"):
                pass
    waiting.join(timeout=5)
    assert order == ["first done", "second"] and budget.held == 0


def test_a_request_over_its_memory_budget_is_a_413_that_says_so():
    client = make_app(config_with(models=("leukocyte",), request_memory_mb=1)).test_client()
    response = post(client, files={"image": encode(smear())})  # 320x240 px at the model's bytes per pixel: > 1 MB
    assert response.status_code == 413
    assert "MMAX_REQUEST_MEMORY_MB" in response.get_json()["message"]
    small = post(client, files={"image": encode(smear((160, 120), leukocytes=((80, 60, 30),)))})
    assert small.status_code == 200  # 19,200 px: within 1 MB


def test_a_request_that_waited_out_its_time_budget_for_a_thread_is_a_503_at_once(client):
    """The budget counts from the request's arrival (the gunicorn worker stamps it): one that waited past it
    behind other requests is answered 503 without being worked on; one that waited less gets the rest."""
    import time

    from api.gunicorn_worker import RECEIVED_AT

    budget = TEST_CONFIG.request_timeout_s
    late = client.post("/model/leukocyte/predict", data={"image": (io.BytesIO(encode(smear())), "c.png")},
                       content_type="multipart/form-data",
                       environ_base={RECEIVED_AT: time.monotonic() - budget - 1})
    assert late.status_code == 503 and "waited" in late.get_json()["message"]
    prompt = client.post("/model/leukocyte/predict", data={"image": (io.BytesIO(encode(smear())), "c.png")},
                         content_type="multipart/form-data", environ_base={RECEIVED_AT: time.monotonic() - 1})
    assert prompt.status_code == 200
