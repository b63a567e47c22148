"""Micro-batching returns every caller its own answer, in order, under concurrency; the fast runtimes agree."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.batching import MicroBatcher
from core.runtime import build_forward
from tests.images import encode, smear


def slow_double(batch: np.ndarray) -> np.ndarray:
    time.sleep(0.02)  # a forward pass long enough for requests to pile up behind it
    return batch * 2.0


def test_concurrent_callers_share_forward_passes_and_get_their_own_rows():
    seen = []
    batcher = MicroBatcher(slow_double, max_batch=16, max_wait_s=0.005, on_batch=lambda i, r: seen.append((i, r)))
    inputs = [np.full((1 + k % 3, 2), float(k)) for k in range(40)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        outputs = list(pool.map(batcher, inputs))
    for given, answer in zip(inputs, outputs):
        np.testing.assert_array_equal(answer, given * 2.0)  # its own rows, in its own order
    assert sum(images for images, _ in seen) == sum(len(x) for x in inputs)
    assert max(requests for _, requests in seen) > 1 and max(images for images, _ in seen) <= 16


def test_an_idle_batcher_does_not_wait_for_company():
    batcher = MicroBatcher(lambda b: b + 1, max_batch=32, max_wait_s=0.0)
    np.testing.assert_array_equal(batcher(np.zeros((3, 1))), np.ones((3, 1)))


def test_a_failing_forward_pass_fails_each_of_its_callers_and_the_batcher_goes_on():
    calls = threading.Event()

    def flaky(batch):
        if not calls.is_set():
            calls.set()
            raise RuntimeError("out of memory")
        return batch

    batcher = MicroBatcher(flaky, max_batch=4, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher(np.zeros((1, 1)))
    np.testing.assert_array_equal(batcher(np.ones((2, 1))), np.ones((2, 1)))


def test_onnx_and_tensorflow_forward_passes_agree():
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    network = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    batch = np.random.default_rng(1).uniform(0, 255, (5, 16, 16, 3)).astype(np.float32)
    expected = np.asarray(network(batch, training=False))
    for runtime in ("tensorflow", "onnx", "auto"):
        name, forward = build_forward(network, runtime)
        assert name == ("onnx" if runtime == "auto" else runtime)
        np.testing.assert_allclose(forward(batch), expected, atol=1e-5)
    with pytest.raises(ValueError, match="runtime"):
        build_forward(network, "tpu")


def test_shrinking_the_onnx_arenas_hands_back_a_large_batch_and_keeps_the_answers():
    import keras

    from core.memory import resident_bytes
    from core.runtime import shrink_arenas

    inputs = keras.Input((128, 128, 3))
    x = keras.layers.Conv2D(32, 3, activation="relu")(keras.layers.Conv2D(32, 3, activation="relu")(inputs))
    network = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    _, forward = build_forward(network, "onnx")
    one = np.random.default_rng(2).uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)
    expected = forward(one)
    forward(np.zeros((64, 128, 128, 3), np.float32))  # the arena grows to this batch's ~250 MB of activations
    grown = resident_bytes()
    assert shrink_arenas() >= 1
    assert grown - resident_bytes() > 100 * 2**20
    np.testing.assert_allclose(forward(one), expected, atol=1e-6)


def test_concurrent_api_calls_equal_sequential_ones(client):
    images = [encode(smear(leukocytes=((160, 120, 18 + 2 * k),), seed=k)) for k in range(12)]

    def predict(image: bytes) -> list[dict]:
        response = client.post("/model/leukocyte/predict", data={"image": (io.BytesIO(image), "a.png")},
                               content_type="multipart/form-data")
        return response.get_json()["predictions"]

    sequential = [predict(image) for image in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(predict, images))
    for one, other in zip(sequential, concurrent):
        assert [p["label"] for p in one] == [p["label"] for p in other]
        for a, b in zip(one, other):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'mmax_batch_images_count{model="leukocyte"}' in metrics
    assert client.get("/model/leukocyte/metadata").get_json()["runtime"] in {"onnx", "tensorflow"}


@pytest.mark.parametrize("threads, rows", [(1, 8), (2, 16), (16, 64)])
def test_forward_passes_hold_rows_per_thread_up_to_the_largest_pass(threads: int, rows: int):
    from config import ROOT
    from core.assets import read_spec
    from core.models.metastasis import MetastasisModel
    from core.onnx_cache import ServedNetwork

    passes: list[int] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        passes.append(len(batch))
        return np.tile([0.25, 0.75], (len(batch), 1)).astype(np.float32)

    model = MetastasisModel(read_spec(ROOT / "assets" / "metastasis"))
    model.configure(max_batch=32)
    model._serve(ServedNetwork("onnx", forward, (4, 4, 3), 2, 2, threads))
    assert model.pass_rows == rows and model._forward.max_batch == min(32, rows)  # the batcher's passes too
    output = model._run_batches(np.zeros((100, 4, 4, 3), np.float32))
    assert len(output) == 100 and sum(passes) == 100 and max(passes) == rows
