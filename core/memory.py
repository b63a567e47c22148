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
The opposite case is small requests: with glibc's default thresholds, which move, the heap handed its top back
after every patch and took it again for the next, about 60 page faults per request; fixed thresholds keep a
request's arrays of up to ``MMAP_THRESHOLD_BYTES`` in the heap and give back only a top over
``TRIM_THRESHOLD_BYTES``.
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

# mallopt's parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: blocks up to this size come from the heap (reused by the next request); larger ones are mapped and unmapped
MMAP_THRESHOLD_BYTES = 4 * 2**20
#: the heap hands back its free top only beyond this (malloc_trim, below, still hands back everything)
TRIM_THRESHOLD_BYTES = 16 * 2**20
#: growth over the ready size, in bytes, from which a finished request hands freed memory back
TRIM_ABOVE_BYTES = 256 * 1024 * 1024

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
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


def tune_malloc(arenas: int = 2) -> None:
    """At most ``arenas`` malloc arenas, and fixed trim and mmap thresholds, for this process and the workers
    forked from it."""
    libc = _glibc()
    if libc is None:
        return
    for parameter, value in ((M_ARENA_MAX, arenas), (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                             (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        if not libc.mallopt(parameter, value):
            log.warning("could not set malloc parameter %d", parameter)


_statm: tuple[int, int] | None = None  # (pid, descriptor) of /proc/self/statm: read after every request


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak. The file stays open (one read per call, not
    an open, a read and a close: this runs after every request); a forked child opens its own."""
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():
            if _statm is not None:  # a forked child's copy of its parent's descriptor reads the parent
                os.close(_statm[1])
            _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * PAGE_BYTES
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
