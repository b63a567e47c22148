"""gunicorn settings, from the same MMAX_* environment as config.py: ``gunicorn "app:create_app()"``."""
import os
import shutil
import tempfile

from config import Config
from core import host, memory, runtime

memory.tune_malloc()  # in the master, so every worker forked from it inherits it (core/memory.py)

_config = Config.from_env()
bind = f"{_config.host}:{_config.port}"
workers = _config.workers
threads = _config.threads
worker_class = "api.gunicorn_worker.ServiceWorker"  # gthread, with the probes on threads of their own
timeout = _config.timeout_s
accesslog = "-"
# gunicorn's default line, then the request ID the response carries (api/tracing.py)
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" request_id=%({x-request-id}o)s'

# Several workers: each keeps its Prometheus metrics in files here, and /metrics adds them up. Unless set,
# a folder of this server's own: two servers on one host must neither add up nor wipe each other's counts.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mmax-metrics-")


def on_starting(server):
    from app import preflight

    given = os.environ.get("MMAX_WORKERS", "").strip()
    why = given if given not in ("", "0") else (
        f"automatic: {host.usable_cores()} usable core(s), {(host.memory_bytes() or 0) / 2**30:.1f} GB memory, "
        f"each worker's budget {_config.worker_memory_mb} MB + 1 GB")
    threads = _config.forward_thread_count() or host.usable_cores()
    server.log.info("%d worker(s) (MMAX_WORKERS %s), %d forward thread(s) each%s%s", workers, why, threads,
                    "" if _config.forward_threads or threads == host.usable_cores()
                    else "; every core for a model of large images (model.json inference.forward_on_every_core)",
                    "; each worker on a core of its own (MMAX_PIN_WORKERS)" if _config.pins_workers() else "")
    preflight(_config)  # a missing asset or unusable data dir: one clear line, and no worker boot loop
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(directory, ignore_errors=True)  # counts from a previous run would be added in
    os.makedirs(directory, exist_ok=True)


def pre_fork(server, worker):
    if _config.pins_workers():  # in the master, which knows the living workers' cores
        worker.core = host.least_used_core(os.sched_getaffinity(0),
                                           [getattr(other, "core", None) for other in server.WORKERS.values()])


def post_fork(server, worker):
    if getattr(worker, "core", None) is not None:
        host.pin_to_core(worker.core)
    if _config.forward_thread_count():  # several workers: each forward pass gets its share of the cores
        runtime.limit_threads(_config.forward_thread_count())


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    from api.gunicorn_worker import SHARES  # the master's, loaded with the worker class

    multiprocess.mark_process_dead(worker.pid)
    SHARES.release(worker.pid)  # its connections are gone: new ones are shared among the living workers
