"""gunicorn settings, from the same MMAX_* environment as config.py: ``gunicorn "app:create_app()"``."""
import os
import shutil
import tempfile

from config import Config

_config = Config.from_env()
bind = f"{_config.host}:{_config.port}"
workers = _config.workers
threads = _config.threads
worker_class = "gthread"
timeout = _config.timeout_s
accesslog = "-"

# Several workers: each keeps its Prometheus metrics in files here, and /metrics adds them up.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), "mmax-metrics"))


def on_starting(server):
    from app import preflight

    preflight(_config)  # a missing asset or unusable data dir: one clear line, and no worker boot loop
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(directory, ignore_errors=True)  # counts from a previous run would be added in
    os.makedirs(directory, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
