"""The forward pass used for serving: a compiled TensorFlow function, or the same graph in ONNX Runtime.

``model.predict`` carries heavy per-call overhead (a data adapter and callbacks on every call) and even a
plain eager call re-dispatches every layer; both are avoided. ``tensorflow`` traces the network once into
a ``tf.function`` with a fixed input signature; ``onnx`` converts that function with tf2onnx and runs it
in ONNX Runtime (faster on CPU, see bench/). ``auto`` takes ONNX when its outputs agree with TensorFlow's
within ``TOLERANCE`` on a check batch, TensorFlow otherwise.
"""
from __future__ import annotations

import logging
import sys
import weakref
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

Forward = Callable[[np.ndarray], np.ndarray]
RUNTIMES = ("auto", "onnx", "tensorflow")
TOLERANCE = 1e-4
_threads = 0  # threads of a forward pass; 0: the runtimes' defaults (every core)
_sessions: "weakref.WeakSet" = weakref.WeakSet()  # every ONNX Runtime session serving in this process


def limit_threads(count: int) -> None:
    """Forward passes built from now on use ``count`` threads: a Spark task owns ``spark.task.cpus`` cores,
    not the machine, and its neighbours run on the others."""
    global _threads
    _threads = count
    if "tensorflow" in sys.modules:  # otherwise applied when TensorFlow is first needed (_tensorflow)
        _limit_tensorflow_threads()


def forward_threads(threads: int | None = None) -> int:
    """How many threads a forward pass built with ``threads`` (as onnx_session_forward takes it) runs on."""
    from core.host import usable_cores

    threads = _threads if threads is None else threads
    return threads or usable_cores()


def _limit_tensorflow_threads() -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(_threads)
        tf.config.threading.set_inter_op_parallelism_threads(_threads)
    except RuntimeError:  # TensorFlow already ran in this process: it keeps its thread pools
        pass


def _tensorflow():
    """TensorFlow, imported on first need (a serving process that runs ONNX files never needs it), with the
    thread limit applied."""
    first = "tensorflow" not in sys.modules
    import tensorflow as tf

    if first and _threads:
        _limit_tensorflow_threads()
    return tf


def single_threaded_blas() -> None:
    """One OpenBLAS thread in this process, for good: the cores belong to ONNX Runtime's threads and to
    concurrent requests. Beside ORT's spinning threads, a multi-threaded product as small as the domain check's
    (200×128 by 128×128) took 3 ms instead of 0.05 ms and made the mitosis answer 1.5 times as slow."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def tensorflow_forward(network) -> tuple[Forward, object]:
    """The network as a traced function (one trace for any batch size); also returns the tf.function."""
    tf = _tensorflow()

    signature = [tf.TensorSpec([None, *network.input_shape[1:]], tf.float32, name="pixels")]
    function = tf.function(lambda x: network(x, training=False), input_signature=signature)
    return (lambda batch: function(batch).numpy()), function


def to_onnx(function) -> bytes:
    """The traced function converted to an ONNX model (tf2onnx, opset 17)."""
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=17)
    return proto.SerializeToString()


def onnx_session_forward(model: bytes, threads: int | None = None) -> Forward:
    """An ONNX model run by ONNX Runtime on ``threads`` threads (0: its default, every core; None: the
    process's setting, limit_threads')."""
    import onnxruntime

    threads = _threads if threads is None else threads
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    # Idle forward threads sleep instead of spinning: a request's Python work shares the cores with them, and
    # spinning took those cores under concurrent load (README, Performance: +7-19 % requests/s at 8 clients).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    spread = _pool_thread_affinities(threads)
    if spread:
        options.add_session_config_entry("session.intra_op_thread_affinities", spread)
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    _sessions.add(session)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def _pool_thread_affinities(threads: int) -> str | None:
    """ONNX Runtime's affinity setting for a session's ``threads - 1`` pool threads (the caller's thread is the
    first) where this thread is pinned to fewer cores than that (core.host.pin_to_core): each may run on any
    core the process had before, as it would without pinning. None where nothing needs setting."""
    import os

    from core.host import cores_before_pinning

    if threads <= 1 or not hasattr(os, "sched_getaffinity"):
        return None
    spread = cores_before_pinning()
    if len(os.sched_getaffinity(0)) >= threads or len(spread) <= len(os.sched_getaffinity(0)):
        return None
    every = ",".join(str(core + 1) for core in sorted(spread))  # ONNX Runtime counts processors from 1
    return ";".join([every] * (threads - 1))


def onnx_forward(function) -> Forward:
    """The traced function converted to ONNX and run by ONNX Runtime."""
    return onnx_session_forward(to_onnx(function))


def check_batch(input_shape) -> np.ndarray:
    """The inputs on which an ONNX graph's outputs are compared with TensorFlow's: four random images."""
    return np.random.default_rng(0).uniform(0, 255, (4, *input_shape)).astype(np.float32)


def shrink_arenas() -> int:
    """Hand back what each ONNX Runtime session's memory arena grew to beyond its first block; the number of
    sessions shrunk. The arena keeps the peak of the largest batch a session has run (about 0.5 GB for 64
    views of 224 px) for reuse, so a worker that once served a large upload would stay large; turning the
    arena off instead made every large forward pass 1.5-1.9 times as slow. A session shrinks at the end of
    a run asked to, so each gets one single-image run; runs in flight keep what they hold."""
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    shrunk = 0
    for session in list(_sessions):
        spec = session.get_inputs()[0]
        if spec.type != "tensor(float)":  # every network here takes float32 images; skip anything else
            continue
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        session.run(None, {spec.name: np.zeros(shape, np.float32)}, options)
        shrunk += 1
    return shrunk


def build_forward(network, runtime: str = "auto") -> tuple[str, Forward]:
    """(runtime name, forward function) for ``network``; see the module docstring for ``runtime``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not '{runtime}'")
    tf_forward, function = tensorflow_forward(network)
    if runtime == "tensorflow":
        return "tensorflow", tf_forward
    try:
        fast = onnx_forward(function)
    except Exception as exc:  # noqa: BLE001 - an unconvertible graph still serves, on TensorFlow
        if runtime == "onnx":
            raise
        log.warning("ONNX conversion failed (%s: %s); serving with TensorFlow", type(exc).__name__, exc)
        return "tensorflow", tf_forward
    check = check_batch(network.input_shape[1:])
    try:
        difference = float(np.max(np.abs(fast(check) - tf_forward(check))))
    except Exception as exc:  # noqa: BLE001 - a converted graph that cannot run still serves, on TensorFlow
        if runtime == "onnx":
            raise
        log.warning("the ONNX graph does not run (%s: %s); serving with TensorFlow", type(exc).__name__, exc)
        return "tensorflow", tf_forward
    if difference > TOLERANCE and runtime == "auto":
        log.warning("ONNX and TensorFlow outputs differ by %.2g (> %g); serving with TensorFlow", difference, TOLERANCE)
        return "tensorflow", tf_forward
    return "onnx", fast
