"""Adaptive micro-batching: concurrent requests to one model share one forward pass.

Request threads queue their inputs; one thread per model takes whatever is queued (up to ``max_batch``
images), runs one forward pass and hands each request its rows. It waits (at most ``max_wait_s``) for more
only while other requests are on their way (inside :meth:`MicroBatcher.expecting`, e.g. still decoding),
so an idle model answers at once; under load, batches grow while the previous forward pass runs.
"""
from __future__ import annotations

import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Request:
    inputs: np.ndarray | None  # let go of once served
    queued: float = field(default_factory=time.monotonic)
    taken: float | None = None  # when the batcher took it into a forward pass
    done: threading.Event = field(default_factory=threading.Event)
    output: np.ndarray | None = None
    error: BaseException | None = None


class MicroBatcher:
    def __init__(self, forward: Forward, max_batch: int, max_wait_s: float, name: str = "model",
                 on_batch: Callable[[int, int], None] | None = None,
                 on_wait: Callable[[float], None] | None = None):
        """``on_batch(images, requests)`` is told the size of every forward pass, ``on_wait(seconds)`` how long
        each call waited for its forward pass to start (for /metrics)."""
        self.forward, self.max_batch, self.max_wait_s = forward, max(1, max_batch), max(0.0, max_wait_s)
        self.on_batch, self.on_wait = on_batch, on_wait
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._carried: _Request | None = None  # did not fit the last batch: first in the next
        self._callers = 0  # requests inside expecting(): more than are queued means company is coming
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """The forward pass of ``inputs`` (any number of rows), shared with concurrent callers."""
        request = _Request(inputs)
        self._queue.put(request)
        request.done.wait()
        if self.on_wait and request.taken is not None:
            self.on_wait(request.taken - request.queued)
        if request.error is not None:
            raise request.error
        return request.output

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Around a whole request (decode, preprocess, forward, postprocess): tells the batcher that a
        forward call from it may come, worth waiting ``max_wait_s`` for."""
        with self._count_lock:
            self._callers += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._callers -= 1

    def _collect(self) -> list[_Request]:
        first, self._carried = self._carried or self._queue.get(), None
        taken = [first]
        size = len(taken[0].inputs)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                remaining = deadline - time.monotonic()
                if remaining > 0 and self._callers > len(taken):
                    request = self._queue.get(timeout=remaining)
                else:
                    request = self._queue.get_nowait()
            except queue.Empty:
                break
            if size + len(request.inputs) > self.max_batch:
                self._carried = request
                break
            taken.append(request)
            size += len(request.inputs)
        return taken

    def _loop(self) -> None:
        while True:
            self._serve(self._collect())

    def _serve(self, taken: list[_Request]) -> None:
        """One shared forward pass. A method of its own so that nothing of it (a batch may be a view of a
        request's whole array) stays referenced while the loop waits for the next request."""
        now = time.monotonic()
        for request in taken:
            request.taken = now
        try:
            batch = np.concatenate([request.inputs for request in taken]) if len(taken) > 1 else taken[0].inputs
            outputs = self.forward(batch)
            if self.on_batch:
                self.on_batch(len(batch), len(taken))
            start = 0
            for request in taken:
                request.output = outputs[start:start + len(request.inputs)]
                start += len(request.inputs)
        except BaseException as exc:  # noqa: BLE001 - handed to the callers, who raise it
            for request in taken:
                request.error = exc
        for request in taken:
            request.inputs = None  # the caller keeps its own array; the batcher lets go of it now
            request.done.set()
