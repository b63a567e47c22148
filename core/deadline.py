"""A time budget for one request: set where the request starts, checked between chunks of its work (forward
passes, slide blocks), so that a request too big for its budget stops with a 503 instead of running on.

Jobs set no deadline: they may take as long as their slide needs (and can be cancelled)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from core.errors import ClientError

_deadline: ContextVar[tuple[float, float] | None] = ContextVar("mmax_deadline", default=None)


class OverBudget(ClientError):
    status = 503


@contextmanager
def budget(seconds: float | None) -> Iterator[None]:
    """Within this block, :func:`check` raises once ``seconds`` have passed (None or 0: no budget)."""
    token = _deadline.set((time.monotonic() + seconds, seconds) if seconds else None)
    try:
        yield
    finally:
        _deadline.reset(token)


def check() -> None:
    """Between two chunks of work: stop here if the request is over its budget."""
    current = _deadline.get()
    if current is not None and time.monotonic() > current[0]:
        raise OverBudget(f"the request needed more than its {current[1]:g} s (setting MMAX_REQUEST_TIMEOUT_S); send a "
                         f"smaller image, or a whole slide as a job")


def remaining() -> float | None:
    """Seconds left of the request's budget (None: no budget)."""
    current = _deadline.get()
    return None if current is None else max(0.0, current[0] - time.monotonic())
