"""Memory: what a request may plan to use, what a worker's requests may use together, and what a worker hands
back to the system after large requests.

A request's need is estimated before its work starts, from the pixels it will hold and the model's measured
peak bytes per pixel (model.json ``inference.memory_bytes_per_pixel``, measured by ``bench/request_memory.py``):
over ``MMAX_REQUEST_MEMORY_MB`` it is refused (413, saying what fits); otherwise it reserves its need in the
worker's ``MMAX_WORKER_MEMORY_MB`` and waits, within its time budget, while others hold it (then 503).

glibc keeps the heap pages a request freed for later use, one arena per thread, so a worker that served a
few large uploads stays large with nothing in flight. Two remedies, both no-ops where the C library is not
glibc: few arenas for the process, and ``malloc_trim`` once a request has ended while the process is well above
the size it had when it got ready (with the batcher's fix, `make soak` went from 3.3 GB to 1.5 GB after load).
ONNX Runtime keeps a memory arena per session that grows to the largest batch it ran; it is shrunk at the
same moment (core.runtime.shrink_arenas).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import threading
from contextlib import contextmanager
from typing import Iterator

from core import deadline
from core.errors import ClientError, ImageTooLarge

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number for the arena count (malloc.h)
#: growth over the ready size, in bytes, from which a finished request hands freed memory back
TRIM_ABOVE_BYTES = 256 * 1024 * 1024

_libc = None
_ready_bytes: int | None = None
_released_at: int = 0  # the size after the last release: releasing again waits for new growth, not every request


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 - raises AttributeError where it does not exist
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def limit_arenas(count: int = 2) -> None:
    """At most ``count`` malloc arenas for this process and the workers forked from it."""
    libc = _glibc()
    if libc is not None and not libc.mallopt(M_ARENA_MAX, count):
        log.warning("could not limit malloc arenas")


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mark_ready() -> None:
    """The models have loaded: the size to come back to."""
    global _ready_bytes
    _ready_bytes = resident_bytes()


def release_if_grown() -> bool:
    """After a request: when the process is TRIM_ABOVE_BYTES over its ready size (and over its size after the
    last release), shrink the ONNX Runtime arenas and hand freed heap pages back. True when it released."""
    global _released_at
    if _ready_bytes is None or resident_bytes() < max(_ready_bytes, _released_at) + TRIM_ABOVE_BYTES:
        return False
    from core.runtime import shrink_arenas

    shrink_arenas()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    _released_at = resident_bytes()
    return True


class MemoryBusy(ClientError):
    status = 503
    retry_after_s = 2


class MemoryBudget:
    """The bytes a worker's requests may hold at once (estimated), shared by its request threads."""

    def __init__(self, request_bytes: int, worker_bytes: int):
        self.request_bytes, self.worker_bytes = request_bytes, max(request_bytes, worker_bytes)
        self.held = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, need: int, what: str) -> Iterator[None]:
        """Hold ``need`` bytes while the block runs: refused over the per-request budget, waited for (within
        the request's time budget) while other requests hold the worker's."""
        if need > self.request_bytes:
            raise ImageTooLarge(f"{what} would need about {need / 2**20:,.0f} MB; the limit per request is "
                                f"{self.request_bytes / 2**20:,.0f} MB (setting MMAX_REQUEST_MEMORY_MB): send "
                                f"{self.request_bytes / need:.0%} of the pixels or fewer, or a whole slide as a job")
        with self._changed:
            if not self._changed.wait_for(lambda: self.held + need <= self.worker_bytes, deadline.remaining()):
                raise MemoryBusy("the requests in progress hold this worker's memory (setting "
                                 "MMAX_WORKER_MEMORY_MB); retry in a moment")
            self.held += need
        try:
            yield
        finally:
            with self._changed:
                self.held -= need
                self._changed.notify_all()
