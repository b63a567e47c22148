"""gunicorn's threaded worker, with the probes on threads of their own.

Every request thread can be busy with inference (or with a client sending its upload slowly); a liveness or
readiness probe queued behind them would time out and get a healthy server restarted. This worker looks at
the first bytes of each request without consuming them and hands the probe routes to a small pool of their
own; everything else goes to the usual ``MMAX_THREADS`` request threads.
"""
from __future__ import annotations

import socket
from concurrent import futures

from gunicorn.workers.gthread import ThreadWorker

#: request-line starts answered on the probe threads: cheap routes that must answer while inference runs
PROBE_REQUESTS = (b"GET /health/", b"GET /v2/health/", b"GET /metrics ", b"HEAD /health/", b"HEAD /v2/health/")
PROBE_THREADS = 2


def is_probe(sock: socket.socket) -> bool:
    """Whether the request waiting on ``sock`` is a probe (read with MSG_PEEK: nothing is consumed)."""
    try:
        head = sock.recv(32, socket.MSG_PEEK)
    except OSError:  # nothing there yet, or TLS: an ordinary request thread parses it as before
        return False
    return head.startswith(PROBE_REQUESTS)


class ServiceWorker(ThreadWorker):
    def init_process(self) -> None:
        self.probe_pool = futures.ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="probe")
        super().init_process()

    def enqueue_req(self, conn) -> None:
        pool = self.probe_pool if is_probe(conn.sock) else self.tpool
        conn.init()
        self._wrap_future(pool.submit(self.handle, conn), conn)
