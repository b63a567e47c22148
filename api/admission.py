"""Back-pressure: at most ``MMAX_QUEUE_MAX`` requests per model are admitted at once (working, or waiting for
a shared forward pass); the next is answered at once with 503 and ``Retry-After`` rather than left to queue
into a client's timeout. Rejections are counted in /metrics (``mmax_rejected_total``)."""
from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

from core.errors import ClientError


class ModelBusy(ClientError):
    status = 503
    retry_after_s = 1


class Admission:
    def __init__(self, limit: int, on_reject=None):
        self.limit, self.on_reject = max(1, limit), on_reject
        self._admitted: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, model_id: str) -> Iterator[None]:
        """Around one request to ``model_id``: admitted while fewer than ``limit`` are, else ModelBusy."""
        with self._lock:
            if self._admitted[model_id] >= self.limit:
                if self.on_reject:
                    self.on_reject(model_id)
                raise ModelBusy(f"model '{model_id}' has {self.limit} requests in progress (setting MMAX_QUEUE_MAX); "
                                f"retry in a moment")
            self._admitted[model_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted[model_id] -= 1
