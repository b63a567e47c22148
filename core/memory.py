"""Memory a worker hands back to the system after large requests.

glibc keeps the heap pages a request freed for later use, and with many threads it keeps them in one arena
per thread: after a few 8000² uploads a worker stayed at 3.3 GB with nothing in flight (0.9 GB when ready;
`make soak`). Two remedies, both no-ops where the C library is not glibc: few arenas for the process, and
``malloc_trim`` once a request has ended while the process is well above the size it had when it got ready.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number for the arena count (malloc.h)
#: growth over the ready size, in bytes, from which a finished request hands freed memory back
TRIM_ABOVE_BYTES = 256 * 1024 * 1024

_libc = None
_ready_bytes: int | None = None


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
    """After a request: hand freed heap pages back when the process is TRIM_ABOVE_BYTES over its ready size.
    True when it trimmed."""
    libc = _glibc()
    if libc is None or _ready_bytes is None or resident_bytes() < _ready_bytes + TRIM_ABOVE_BYTES:
        return False
    libc.malloc_trim(0)
    return True
