"""gunicorn's threaded worker, made safe against slow clients and busy threads.

- **Requests are read before a thread is given.** gthread hands a connection to a request thread as soon as
  its first bytes arrive; a client that then sends its upload a byte at a time holds that thread for as long
  as it likes, and four such clients stop the service. Here the worker's event loop reads each request (its
  headers, and its body up to ``MMAX_MAX_UPLOAD_BYTES``) without blocking, and only a complete request gets a
  thread. A request not complete within ``MMAX_UPLOAD_TIMEOUT_S`` is answered 408 and closed.
- **A request's time budget counts from its arrival.** The time a complete request waited for a free thread
  is part of it (WSGI environ ``mmax.received_at``), so a client is not kept past ``MMAX_REQUEST_TIMEOUT_S``
  by the requests ahead of it.
- **gunicorn's own errors are JSON.** A request gunicorn refuses before the application sees it (a malformed
  request line, headers over its limits: 400, 431) gets the service's JSON error instead of an HTML page.
- **A new connection goes to the worker holding the fewest.** The kernel wakes every worker for it and the
  first to call accept gets it, so keep-alive clients could pile up on one worker while another had few
  (Performance). A worker that holds more connections than another leaves that one a moment (at most
  ``HANDOVER_WAIT_S``) to take the waiting connection (``ConnectionShares``).
- **The probes have threads of their own.** A liveness or readiness probe queued behind busy request threads
  would time out and get a healthy server restarted: ``/health/…``, ``/v2/health/…`` and ``/metrics`` go to
  a small pool of their own.

TLS connections (gunicorn's ``certfile``) are handed over as gthread does: their bytes cannot be read here.
"""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import select
import selectors
import socket
import threading
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from config import Config

#: request-line starts answered on the probe threads: cheap routes that must answer while inference runs
PROBE_REQUESTS = (b"GET /health/", b"GET /v2/health/", b"GET /metrics ", b"HEAD /health/", b"HEAD /v2/health/")
PROBE_THREADS = 2
#: a request head longer than this is handed over as it is (gunicorn refuses it)
HEAD_MAX_BYTES = 64 * 1024
#: request bytes one worker holds for clients still sending; beyond, a request thread reads the rest itself
BUFFERED_MAX_BYTES = 256 * 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: WSGI environ key: time.monotonic() when the whole request had arrived (api/model.py counts its budget from it)
RECEIVED_AT = "mmax.received_at"
#: longest a worker waits for one that holds fewer connections to accept the waiting one (its event loop waits)
HANDOVER_WAIT_S = 0.005
#: the connection count a stopping worker shows the others, so that none waits for it to accept
STOPPING = 2**31 - 1


class ConnectionShares:
    """How many connections each living worker of this server holds, in memory the workers share: made when
    the master imports this module (it loads the worker class), inherited by every worker it forks. A worker
    takes a free slot when it starts and writes only its own; the master frees the slot of a worker that exits."""

    SLOTS = 64

    def __init__(self) -> None:
        self.lock = multiprocessing.Lock()
        self.pids = multiprocessing.RawArray("i", self.SLOTS)
        self.counts = multiprocessing.RawArray("i", self.SLOTS)
        self.slot: int | None = None

    def claim(self) -> None:
        """In a worker: take a free slot (more workers than slots: this one takes no part)."""
        with self.lock:
            for slot, pid in enumerate(self.pids):
                if pid == 0:
                    self.pids[slot], self.counts[slot], self.slot = os.getpid(), 0, slot
                    return

    def release(self, worker_pid: int) -> None:
        """In the master: the worker ``worker_pid`` has exited."""
        with self.lock:
            for slot, pid in enumerate(self.pids):
                if pid == worker_pid:
                    self.pids[slot] = 0

    def publish(self, connections: int) -> None:
        if self.slot is not None:
            self.counts[self.slot] = connections

    def fewer_elsewhere(self, connections: int) -> bool:
        """Whether another living worker holds fewer connections than ``connections``."""
        return self.slot is not None and any(
            pid and slot != self.slot and self.counts[slot] < connections for slot, pid in enumerate(self.pids))


SHARES = ConnectionShares()


class BufferedSocket:
    """A client socket whose request bytes the event loop has already read: ``recv`` serves them first.

    gunicorn answers ``Expect: 100-continue`` when it parses the head; the event loop has done so already
    when it waited for that body, so that second answer is dropped."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pending = bytearray()
        self.continued = False

    def recv(self, size: int, *flags: int) -> bytes:
        if self.pending:
            data = bytes(self.pending[:size])
            del self.pending[:size]
            return data
        return self.sock.recv(size, *flags)

    def send(self, data: bytes, *flags: int) -> int:
        if data == CONTINUE and self.continued:
            self.continued = False
            return len(data)
        return self.sock.send(data, *flags)

    def __getattr__(self, name: str) -> Any:  # fileno, sendall, sendfile, setblocking, close, shutdown…
        return getattr(self.sock, name)


def request_complete(head_and_body: bytes | bytearray, body_max: int) -> tuple[bool, bool]:
    """(whether a thread can parse the request without waiting for the client, whether the client waits
    for ``100 Continue`` before it sends the body) for the bytes read so far."""
    end = head_and_body.find(b"\r\n\r\n")
    if end < 0:
        return len(head_and_body) > HEAD_MAX_BYTES, False
    headers = {}
    for line in bytes(head_and_body[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    body = len(head_and_body) - end - 4
    expects = headers.get(b"expect") == b"100-continue"
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        return head_and_body.endswith(b"0\r\n\r\n") or body > body_max, expects and body == 0
    try:
        length = int(headers.get(b"content-length", b"0"))
    except ValueError:
        return True, False  # gunicorn answers it 400
    # a body over the limit is refused (413) by the application before it is read
    return body >= length or length > body_max, expects and body == 0


def write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """gunicorn's ``util.write_error`` (an HTML page), as the service's JSON error (api/errors.py)."""
    text = f"{reason}: {message}" if message else reason
    body = json.dumps({"status": "error", "message": text if len(text) <= 200 else text[:199] + "…"}).encode()
    util.write_nonblock(sock, f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json"
                              f"\r\nContent-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)


class ServiceWorker(ThreadWorker):
    def init_process(self) -> None:
        util.write_error = write_json_error  # the one writer of gunicorn's error answers, in this worker process
        config = Config.from_env()
        self.upload_timeout_s, self.body_max = config.upload_timeout_s, config.max_upload_bytes
        self.probe_pool = futures.ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="probe")
        self.reading: dict[Any, float] = {}  # connection → when its request must have arrived
        SHARES.claim()
        super().init_process()

    def accept(self, server, listener) -> None:
        if self.left_to_another_worker(listener):
            return
        try:
            sock, client = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        conn = TConn(self.cfg, sock, client, server)
        if not self.cfg.is_ssl:
            conn.sock = BufferedSocket(sock)
        self.nr_conns += 1
        SHARES.publish(self.nr_conns)
        with self._lock:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))

    def left_to_another_worker(self, listener) -> bool:
        """True once a worker holding fewer connections has accepted the waiting one (it was woken for it too);
        False when this worker should accept it: none holds fewer, or none took it within HANDOVER_WAIT_S."""
        deadline = time.monotonic() + HANDOVER_WAIT_S
        while SHARES.fewer_elsewhere(self.nr_conns) and time.monotonic() < deadline:
            time.sleep(0.0002)  # releases the GIL: this worker's request threads go on meanwhile
            if not select.select([listener], [], [], 0)[0]:
                return True
        return False

    def on_client_socket_readable(self, conn, client) -> None:
        with self._lock:
            self.poller.unregister(client)
            if conn.initialized and conn not in self.reading:
                try:
                    self._keep.remove(conn)
                except ValueError:  # gunicorn's own race: the keep-alive sweep closed it
                    return
        if isinstance(conn.sock, BufferedSocket) and not self.read_more(conn):
            return
        self.reading.pop(conn, None)
        self.enqueue_req(conn)

    def read_more(self, conn) -> bool:
        """Read what the client has sent; True once a thread can take the request, False while it is
        still on its way (or the connection has been closed)."""
        buffered = conn.sock
        leftover = conn.parser is not None and conn.parser.unreader.buf.tell() > 0
        ended = False  # the client has closed its side: nothing more will come
        try:
            while len(buffered.pending) <= self.body_max + HEAD_MAX_BYTES:
                data = buffered.sock.recv(256 * 1024)
                if not data:
                    ended = True
                    break
                buffered.pending += data
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.drop(conn)
            return False
        complete, expects = request_complete(buffered.pending, self.body_max)
        if complete or leftover or sum(len(c.sock.pending) for c in self.reading) > BUFFERED_MAX_BYTES:
            return True
        if ended:  # gone before its request was whole: it can never be answered
            self.drop(conn)
            return False
        if expects and not buffered.continued:
            buffered.sock.send(CONTINUE)  # 25 bytes into an empty send buffer
            buffered.continued = True
        self.reading.setdefault(conn, time.monotonic() + self.upload_timeout_s)
        with self._lock:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))
        return False

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.arrivals = arrivals = threading.local()
        application = self.wsgi

        def stamped(environ, start_response):
            environ[RECEIVED_AT] = getattr(arrivals, "at", None) or time.monotonic()
            return application(environ, start_response)

        self.wsgi = stamped

    def handle(self, conn):
        self.arrivals.at = getattr(conn, "received_at", None)  # this thread's request, for the application
        return super().handle(conn)

    def enqueue_req(self, conn) -> None:
        conn.received_at = time.monotonic()
        sock = conn.sock
        head = sock.pending if isinstance(sock, BufferedSocket) else peek(sock)
        pool = self.probe_pool if bytes(head[:32]).startswith(PROBE_REQUESTS) else self.tpool
        conn.init()
        self._wrap_future(pool.submit(self.handle, conn), conn)

    def murder_keepalived(self) -> None:  # once per turn of the event loop
        super().murder_keepalived()
        SHARES.publish(self.nr_conns if self.alive else STOPPING)  # a stopping worker accepts no more
        now = time.monotonic()
        for conn in [c for c, deadline in self.reading.items() if deadline < now]:
            try:
                write_json_error(conn.sock.sock, 408, "Request Timeout", f"the request did not arrive within "
                                 f"{self.upload_timeout_s:g} s (setting MMAX_UPLOAD_TIMEOUT_S)")
            except OSError:
                pass
            self.drop(conn)

    def drop(self, conn) -> None:
        """Forget and close a connection whose request will not be served."""
        self.reading.pop(conn, None)
        with self._lock:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        self.nr_conns -= 1
        conn.close()


def peek(sock: socket.socket) -> bytes:
    """The first bytes waiting on ``sock``, not consumed (nothing yet, or TLS: empty)."""
    try:
        return sock.recv(32, socket.MSG_PEEK)
    except OSError:
        return b""
