"""Small pieces on their own: decoding, options, test-time augmentation, the split."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from config import ROOT
from core.errors import BadOption, ClientError, ImageTooLarge, UnsupportedImage
from core.imageio import decode_image, to_rgb8
from core.options import Option, parse_options
from core.training.data import Arrays, three_way_split
from core.tta import dihedral_mean, dihedral_stack, dihedral_views
from tests.images import encode


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageTooLarge, match="9,000,000 pixels"):
        decode_image(data, max_pixels=1_000_000)


@pytest.mark.parametrize("data, error", [(b"", ClientError), (b"GIF89a" + b"\0" * 10, UnsupportedImage),
                                         (b"%PDF-1.4 hello", UnsupportedImage)])
def test_undecodable_uploads(data, error):
    with pytest.raises(error):
        decode_image(data, max_pixels=10**6)


def test_sixteen_bit_grey_is_stretched_to_eight_bit_rgb():
    array = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15)
    rgb = to_rgb8(Image.fromarray(array))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8 and rgb.max() == 255


def test_options_parse_defaults_types_and_unknowns():
    declared = (Option("scale", float, "s", 1.0, minimum=0.1, maximum=4.0),
                Option("format", str, "f", "json", choices=("json", "png")), Option("draw", bool, "d", False))
    assert parse_options(declared, {}, set()) == {"scale": 1.0, "format": "json", "draw": False}
    assert parse_options(declared, {"scale": " 2 ", "draw": "True"}, set())["scale"] == 2.0
    for given in ({"scale": "0"}, {"format": "PNGX"}, {"draw": "maybe"}, {"draw": "1"}, {"other": "1"}):
        with pytest.raises(BadOption):
            parse_options(declared, given, set())
    assert parse_options(declared, {"image": "x"}, {"image"})["format"] == "json"


def test_dihedral_views_are_the_eight_distinct_symmetries():
    batch = np.arange(2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
    views = dihedral_views(batch)
    assert len({v.tobytes() for v in views}) == 8


def test_the_fast_dihedral_stack_is_numpys_rotations_and_mirror_images():
    """Pixels moved whole from the batch and its transposed copy: the same 8 views, in the same order, as
    np.rot90 of the image and of its mirror image, for any dtype, channel count and memory layout."""
    rng = np.random.default_rng(0)
    for shape, dtype in (((2, 7, 7, 3), np.float32), ((1, 6, 6, 4), np.uint8), ((3, 5, 5, 1), np.int64)):
        batch = (rng.random(shape) * 255).astype(dtype)
        for given in (batch, batch[:, ::-1], np.asfortranarray(batch)):
            expected = np.concatenate([np.rot90(image, turns, axes=(1, 2))
                                       for image in (given, given[:, :, ::-1]) for turns in range(4)])
            stacked = dihedral_stack(given)
            assert stacked.dtype == given.dtype and np.array_equal(stacked, expected)


def test_dihedral_mean_of_an_orientation_blind_function_is_unchanged():
    batch = np.random.default_rng(0).random((5, 8, 8, 3))
    total = lambda x: x.sum(axis=(1, 2))  # noqa: E731 - invariant under rotation and flips
    assert np.allclose(dihedral_mean(total, batch), total(batch))


def test_dihedral_mean_in_chunks_is_the_mean_of_the_whole_and_never_stacks_more_than_a_chunk():
    batch = np.random.default_rng(0).random((11, 6, 6, 3)).astype(np.float32)
    seen = []

    def corner(x):  # orientation-dependent: each view gives a different value
        seen.append(len(x))
        return x[:, :1, :1, :].reshape(len(x), 3)

    whole = dihedral_mean(corner, batch, chunk=100)
    assert np.allclose(dihedral_mean(corner, batch, chunk=4), whole) and max(seen[1:]) == 8 * 4
    assert np.allclose(whole, np.mean([v[:, 0, 0, :] for v in dihedral_views(batch)], axis=0))


def test_split_never_puts_one_group_in_two_parts():
    rng = np.random.default_rng(0)
    groups = np.array([f"{label}/{cell}" for label in range(4) for cell in range(12) for _ in range(3)])
    y = np.array([int(g.split("/")[0]) for g in groups])
    arrays = Arrays(rng.random((len(y), 2, 2, 3)), y, groups)
    split = three_way_split(arrays, folds=5, fold=0, val_fraction=0.2, seed=0)
    parts = [set(groups[index]) for index in split.values()]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(len(index) for index in split.values()) == len(y)
    for index in split.values():
        assert set(y[index]) == {0, 1, 2, 3}  # stratified: every class in every part


def test_augmentation_keeps_stain_colour():
    """Saturation and hue jitter must stay mild: the classes differ by stain colour (Keras 3 factor semantics)."""
    from core.training.data import augmenter
    from tests.images import smear as draw

    batch = np.stack([np.asarray(draw(size=(96, 96), leukocytes=((48, 48, 20),), platelets=(), seed=s))
                      for s in range(8)]).astype(np.float32)

    def saturation(images):
        return float((images.max(axis=-1) - images.min(axis=-1)).mean())

    augmented = np.clip(np.asarray(augmenter(seed=0)(batch, training=True)), 0, 255)
    assert saturation(augmented) > 0.6 * saturation(batch)


def test_augmentation_without_colour_jitter_moves_pixels_but_keeps_their_colours():
    """--no-colour-jitter: geometry only, so an image of one colour keeps it exactly, while colour jitter moves it;
    a smear's layout still changes."""
    from core.training.data import augmenter
    from tests.images import smear as draw

    flat = np.broadcast_to(np.array([200, 120, 170], np.float32), (8, 64, 64, 3)).copy()
    plain = np.asarray(augmenter(seed=0, fill="reflect", colour=False)(flat, training=True))
    jittered = np.asarray(augmenter(seed=0, fill="reflect")(flat, training=True))
    assert np.abs(plain - flat).max() < 0.5
    assert np.abs(jittered - flat).max() > 5.0

    smear = np.asarray(draw(size=(96, 96), leukocytes=((40, 52, 20),), platelets=()), np.float32)[None]
    assert np.abs(np.asarray(augmenter(seed=0, colour=False)(smear, training=True)) - smear).mean() > 1.0


def test_malformed_setting_names_the_variable(monkeypatch):
    from config import Config

    monkeypatch.setenv("MMAX_WORKERS", "two")
    with pytest.raises(SystemExit, match="MMAX_WORKERS must be a whole number"):
        Config.from_env()


def test_several_workers_divide_the_cores_among_their_forward_passes(monkeypatch):
    from config import Config

    monkeypatch.setattr("core.host.usable_cores", lambda *cgroup: 8)
    assert Config(workers=1).forward_thread_count() == 0  # one worker: the runtimes' own default
    assert Config(workers=2).forward_thread_count() == 4
    assert Config(workers=16).forward_thread_count() == 1
    assert Config(workers=2, forward_threads=3).forward_thread_count() == 3  # MMAX_FORWARD_THREADS wins
    monkeypatch.setenv("MMAX_FORWARD_THREADS", "2")
    assert Config.from_env().forward_threads == 2
    # a model whose every request is one large image takes every core, unless MMAX_FORWARD_THREADS says otherwise
    assert Config(workers=2).model_forward_threads(every_core=True) == 8
    assert Config(workers=2).model_forward_threads(every_core=False) is None  # the worker's share
    assert Config(workers=2, forward_threads=3).model_forward_threads(every_core=True) is None


def _host_files(root, cpu_max=None, memory_max=None, mem_total_kb=16 * 2**20, v1=False):
    """A fake cgroup folder and /proc/meminfo under ``root``; (cgroup, meminfo)."""
    cgroup = root / "cgroup"
    (cgroup / "cpu").mkdir(parents=True)
    (cgroup / "memory").mkdir()
    if v1:
        quota, period = cpu_max.split() if cpu_max else ("-1", "100000")
        (cgroup / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
        (cgroup / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
        (cgroup / "memory" / "memory.limit_in_bytes").write_text(f"{memory_max or 9223372036854771712}\n")
    else:
        (cgroup / "cpu.max").write_text(f"{cpu_max or 'max 100000'}\n")
        (cgroup / "memory.max").write_text(f"{memory_max or 'max'}\n")
    meminfo = root / "meminfo"
    meminfo.write_text(f"MemTotal:       {mem_total_kb} kB\nMemFree:        1000 kB\n")
    return cgroup, meminfo


@pytest.mark.parametrize("v1", [False, True])
def test_the_host_limits_are_the_containers_not_the_machines(tmp_path, monkeypatch, v1):
    from core import host

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    free, _ = _host_files(tmp_path / "free", v1=v1)
    assert host.usable_cores(free) == 16 and host.cpu_quota(free) is None
    assert host.memory_bytes(free, tmp_path / "free" / "meminfo") == 16 * 2**30  # MemTotal when no limit
    limited, meminfo = _host_files(tmp_path / "limited", cpu_max="250000 100000", memory_max=8 * 2**30, v1=v1)
    assert host.cpu_quota(limited) == 2.5
    assert host.usable_cores(limited) == 2  # --cpus 2.5: two whole cores
    assert host.memory_bytes(limited, meminfo) == 8 * 2**30


def test_each_worker_takes_the_core_the_fewest_living_workers_hold(monkeypatch):
    from core import host

    assert host.least_used_core({0, 1}, []) == 0
    assert host.least_used_core({0, 1}, [0]) == 1
    assert host.least_used_core({0, 1, 2, 3}, [0, 1, 3]) == 2
    assert host.least_used_core({0, 1}, [1, None]) == 0  # a worker started unpinned holds none
    assert host.least_used_core({4, 5}, [4, 5, 4]) == 5  # started again after a worker on 5 stopped: 5 again
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert host.one_core_per_worker(2) and not host.one_core_per_worker(1) and not host.one_core_per_worker(3)


def test_a_worker_leaves_a_new_connection_to_one_that_holds_fewer(monkeypatch):
    """ConnectionShares as the master and two forked workers see it (copies share the same memory)."""
    import copy

    from api.gunicorn_worker import ConnectionShares

    master = ConnectionShares()
    first, second = copy.copy(master), copy.copy(master)
    monkeypatch.setattr("os.getpid", lambda: 101)
    first.claim()
    monkeypatch.setattr("os.getpid", lambda: 102)
    second.claim()
    assert first.slot is not None and second.slot is not None and first.slot != second.slot
    first.publish(3)
    second.publish(2)
    assert first.fewer_elsewhere(3) and not second.fewer_elsewhere(2)
    second.publish(3)
    assert not first.fewer_elsewhere(3)  # as many: this worker takes it
    second.publish(0)
    master.release(102)  # the second worker exited: its count holds nobody back
    assert not first.fewer_elsewhere(3)
    third = copy.copy(master)
    monkeypatch.setattr("os.getpid", lambda: 103)
    third.claim()
    assert third.slot == second.slot and first.fewer_elsewhere(1)  # its slot is taken again, from 0
    assert not copy.copy(master).fewer_elsewhere(100)  # a worker without a slot takes every connection


def test_gunicorn_gives_the_workers_distinct_cores_and_only_one_per_core(monkeypatch, tmp_path):
    import runpy
    from types import SimpleNamespace

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the settings file would make one otherwise
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    for workers, pinned in (("2", True), ("1", False), ("3", False)):
        monkeypatch.setenv("MMAX_WORKERS", workers)
        settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
        server = SimpleNamespace(WORKERS={})
        for pid in range(int(workers)):
            worker = SimpleNamespace()
            settings["pre_fork"](server, worker)
            server.WORKERS[pid] = worker
        cores = [getattr(worker, "core", None) for worker in server.WORKERS.values()]
        assert cores == ([0, 1] if pinned else [None] * int(workers))
    monkeypatch.setenv("MMAX_WORKERS", "2")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["_config"].pins_workers()
    for setting, value in (("MMAX_SPARK_MASTER", "local[2]"), ("MMAX_RUNTIME", "tensorflow"), ("MMAX_PIN_WORKERS", "0")):
        with monkeypatch.context() as changed:
            changed.setenv(setting, value)
            assert not runpy.run_path(str(ROOT / "gunicorn.conf.py"))["_config"].pins_workers(), setting


# A fresh process, as a worker is: its main thread pinned to the last core, then a forward pass of as many
# threads as cores; prints the new threads' cores and the pass's answer. A pool thread starts on its creator's
# core and moves itself to the cores it is given once it first runs, which on a busy pinned core can be a
# while after the pass: so it waits up to 30 s for a new thread on every core.
PINNED_WORKER = """
import glob, json, os, time
import numpy as np
from onnx import TensorProto, helper
from core import host, runtime

def affinities():
    found = {}
    for task in glob.glob("/proc/self/task/*"):
        try:
            found[task] = sorted(os.sched_getaffinity(int(task.rsplit("/", 1)[1])))
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    return found

cores = sorted(os.sched_getaffinity(0))
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
host.pin_to_core(cores[-1])
before = affinities()
forward = runtime.onnx_session_forward(model, len(cores))
answer = forward(np.array([[-1, 2, -3, 4]], np.float32)).tolist()
waited = time.monotonic()
while True:
    new_threads = [cpus for task, cpus in affinities().items() if task not in before]
    if cores in new_threads or time.monotonic() - waited > 30:
        break
    time.sleep(0.05)
print(json.dumps({"cores": cores, "own": sorted(os.sched_getaffinity(0)), "usable": host.usable_cores(),
                  "new_threads": new_threads, "answer": answer}))
"""


def test_a_pinned_worker_keeps_its_core_and_several_thread_forward_passes_spread_beyond_it():
    import json
    import subprocess
    import sys

    from core import host

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    done = subprocess.run([sys.executable, "-c", PINNED_WORKER], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["own"] == seen["cores"][-1:]
    assert seen["usable"] >= len(seen["cores"]) or host.cpu_quota() is not None  # the workers' cores, not one
    assert seen["cores"] in seen["new_threads"]  # ONNX Runtime's pool threads run on every core
    assert seen["answer"] == [[0, 2, 0, 4]]


def test_automatic_workers_are_one_per_core_as_far_as_memory_allows(tmp_path, monkeypatch):
    from config import Config
    from core import host

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    budget = 5120 * 2**20
    roomy = _host_files(tmp_path / "roomy", mem_total_kb=64 * 2**20)
    assert host.auto_workers(budget, *roomy) == 8
    small = _host_files(tmp_path / "small", memory_max=13 * 2**30)  # two budgets of 5 GB + 1 GB fit, not three
    assert host.auto_workers(budget, *small) == 2
    tiny = _host_files(tmp_path / "tiny", memory_max=2 * 2**30)
    assert host.auto_workers(budget, *tiny) == 1  # never none
    two_cores = _host_files(tmp_path / "two", cpu_max="200000 100000", mem_total_kb=64 * 2**20)
    assert host.auto_workers(budget, *two_cores) == 2
    assert host.auto_workers(budget, tmp_path / "nothing", tmp_path / "nothing") == 8  # unreadable: the cores

    monkeypatch.setattr(host, "auto_workers", lambda worker_bytes: 3 if worker_bytes == 1024 * 2**20 else -1)
    monkeypatch.setenv("MMAX_WORKER_MEMORY_MB", "1024")
    monkeypatch.delenv("MMAX_WORKERS", raising=False)
    assert Config.from_env().workers == 3  # unset: automatic, from the worker's memory budget
    monkeypatch.setenv("MMAX_WORKERS", "0")
    assert Config.from_env().workers == 3
    monkeypatch.setenv("MMAX_WORKERS", "5")
    assert Config.from_env().workers == 5  # a number is taken as it is


def test_temperature_scaling_calibrates_overconfident_probabilities():
    from core.evaluation import expected_calibration_error, fit_temperature, temper

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    right = rng.random(2000) < 0.7  # right 70 % of the time, always 97 % sure
    predicted = np.where(right, labels, (labels + rng.integers(1, 4, 2000)) % 4)
    probabilities = np.full((2000, 4), 0.01)
    probabilities[np.arange(2000), predicted] = 0.97
    temperature = fit_temperature(probabilities, labels)
    tempered = temper(probabilities, temperature)
    assert temperature > 1 and (tempered.argmax(axis=1) == predicted).all()
    assert expected_calibration_error(probabilities, labels) > 0.25 > 0.05 > expected_calibration_error(tempered, labels)


def test_pooled_report_counts_cells_with_intervals_and_the_majority_answer():
    from core.training.report import pooled_report

    # 6 cells of class 0 (3 files each, all right), 2 cells of class 1 (one right, one wrong).
    groups = np.repeat([f"c{k}" for k in range(8)], 3)
    y = np.repeat([0, 0, 0, 0, 0, 0, 1, 1], 3)
    predicted = y.copy()
    predicted[-3:] = 0
    probabilities = np.eye(2)[predicted] * 0.8 + 0.1
    report = pooled_report(y, probabilities, groups, ["a", "b"], confidence_floor=0.5, rounds=300)
    cells = report["per_group"]
    assert cells["groups"] == 8 and cells["per_class"] == {"a": 6, "b": 2}
    assert cells["accuracy"] == 7 / 8 and cells["recall"] == {"a": 1.0, "b": 0.5}
    assert cells["accuracy_interval_95"][0] < 7 / 8 <= cells["accuracy_interval_95"][1]
    assert report["majority_baseline"] == {"label": "a", "accuracy": 0.75, "per_group_accuracy": 0.75}
    assert report["confidence_floor"]["share_uncertain"] == 0.0


def test_resident_bytes_follows_the_process_and_a_forked_child_reads_its_own():
    from core import memory

    before = memory.resident_bytes()
    block = np.ones(64 * 2**20, np.uint8)  # touched: 64 MB more resident
    assert memory.resident_bytes() - before > 48 * 2**20
    del block
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the parent's open descriptor reads the parent: the child must open its own
        resident = memory.resident_bytes()
        os.write(writer, f"{memory._statm[0] == os.getpid()} {resident > 0}".encode())
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(reader, 64).decode() == "True True"
