"""What this host lets the service use: its cores and memory as a container sees them.

``docker run --cpus 2 --memory 8g`` on a 64-core machine means 2 cores and 8 GB: the limits are read from
the process's CPU affinity and its cgroup (v2, else v1), not from the machine's totals. Used to choose how
many workers to start, how many threads each forward pass gets, and whether each worker gets a core of its own.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable

CGROUP = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
#: what one worker holds besides its requests: every model loaded, runtimes' arenas after bursts (~0.75 GB
#: measured by bench/worker_memory.py), with room to spare
WORKER_BASE_BYTES = 1024 * 2**20


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """Cores the cgroup's CPU quota allows (``--cpus``), or None without a quota."""
    v2 = _read(cgroup / "cpu.max")  # "max 100000" or "200000 100000"
    if v2:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    quota, period = _read(cgroup / "cpu" / "cpu.cfs_quota_us"), _read(cgroup / "cpu" / "cpu.cfs_period_us")
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def usable_cores(cgroup: Path = CGROUP) -> int:
    """Cores this process may run on: its affinity (before a worker was pinned to one of them), lowered to a
    CPU quota (at least one)."""
    cores = len(cores_before_pinning()) or os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, int(quota))) if quota else cores


def memory_bytes(cgroup: Path = CGROUP, meminfo: Path = MEMINFO) -> int | None:
    """Memory this process's cgroup may use, or the machine's total; None where neither can be read."""
    limits = []
    text = _read(meminfo)
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            limits.append(int(line.split()[1]) * 1024)
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        value = _read(path)
        if value and value.isdigit():  # "max" (v2) or a huge number (v1) when unlimited
            limits.append(int(value))
    return min(limits) if limits else None


def worker_need(worker_memory_bytes: int) -> int:
    """The memory one worker may come to hold: its requests' budget (MMAX_WORKER_MEMORY_MB) and its models."""
    return worker_memory_bytes + WORKER_BASE_BYTES


def auto_workers(worker_memory_bytes: int, cgroup: Path = CGROUP, meminfo: Path = MEMINFO) -> int:
    """One worker per usable core, as many as fit in memory with each holding its requests' budget
    (``worker_memory_bytes``, MMAX_WORKER_MEMORY_MB) and its models (WORKER_BASE_BYTES); at least one.

    A single interpreter runs a request's Python steps one at a time: on 2 cores, two workers answered 55 %
    more leukocyte and patch requests at 8 clients than one (bench/serving.py)."""
    cores = usable_cores(cgroup)
    memory = memory_bytes(cgroup, meminfo)
    if memory is None:
        return cores
    return max(1, min(cores, memory // worker_need(worker_memory_bytes)))


# ---- one core per worker ------------------------------------------------------------------------------
_cores_before_pinning: frozenset[int] | None = None


def one_core_per_worker(workers: int) -> bool:
    """Whether each of ``workers`` processes can be given a core of this process's affinity to itself: as
    many workers as cores, more than one (a CPU quota over a larger set limits time, not which cores)."""
    return hasattr(os, "sched_setaffinity") and workers > 1 and workers == len(os.sched_getaffinity(0))


def least_used_core(cores: Iterable[int], taken: Iterable[int | None]) -> int:
    """The core of ``cores`` that the fewest of ``taken`` (the living workers' cores) hold, the lowest on a
    tie: a worker started again after another stopped takes the core that was freed."""
    held = Counter(taken)
    return min(sorted(cores), key=lambda core: held[core])


def pin_to_core(core: int) -> None:
    """This thread, and every thread it starts from now on (request threads, the batchers, one-thread forward
    passes), runs on ``core`` only: a worker's Python work and its forward passes then share one core's
    caches instead of moving between cores with the other workers' (bench: patch and leukocyte p99 at 8
    clients lower in 8 of 8 alternated rounds). Forward passes of several threads still spread over the cores
    the process had before (cores_before_pinning)."""
    global _cores_before_pinning
    if _cores_before_pinning is None:
        _cores_before_pinning = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})


def cores_before_pinning() -> frozenset[int]:
    """The cores this process could run on before pin_to_core (its affinity when never pinned)."""
    if _cores_before_pinning is not None:
        return _cores_before_pinning
    return frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
