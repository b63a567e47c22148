"""Service settings, all read from environment variables (prefix ``MMAX_``) with documented defaults.

The table in README.md lists the same settings; ``Config.from_env`` is the one place they are read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core import host

ROOT = Path(__file__).resolve().parent


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MMAX_{name}", default)


def _env_int(name: str, default: int) -> int:
    value = _env(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"setting MMAX_{name} must be a whole number, not '{value}'") from None


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name, "1" if default else "0").strip().lower()
    return value in {"1", "true", "yes", "on"}


#: the service's version (the API, the inference protocol's server metadata); each model has its own
SERVICE_VERSION = "1.0"


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 5000
    # gunicorn worker processes; from_env: MMAX_WORKERS unset or 0 gives one per usable core, as many as fit
    # in memory (core/host.py)
    workers: int = 1
    threads: int = 4
    # Threads of one forward pass (ONNX Runtime, TensorFlow); 0: the cores divided among the workers, so
    # several workers do not fight over them (one worker: the runtimes' own default, every core).
    forward_threads: int = 0
    # One core of its own for each worker where there are as many workers as cores (core.host.pin_to_core).
    pin_workers: bool = True
    timeout_s: int = 120
    assets_dir: Path = ROOT / "assets"
    # "all" serves every model found in assets_dir; otherwise a comma-separated list of model ids.
    models: tuple[str, ...] | None = None
    max_upload_bytes: int = 64 * 1024 * 1024
    # A request (head and body) must have arrived within this; it gets a request thread only once it has.
    upload_timeout_s: int = 300
    max_image_pixels: int = 64_000_000
    cors: bool = False
    api_key: str | None = None
    log_level: str = "INFO"
    # Inference: "auto" (ONNX Runtime where it agrees with TensorFlow), "onnx" or "tensorflow"; concurrent
    # requests share forward passes of up to batch_max images, waiting at most batch_wait_ms for company.
    runtime: str = "auto"
    # Where the networks' ONNX conversions are kept (core/onnx_cache.py): made once per weights file by a
    # child process, so that a worker never imports TensorFlow.
    network_cache: Path = ROOT / ".cache" / "networks"
    batch_max: int = 32
    batch_wait_ms: int = 2
    # Back-pressure: requests admitted per model at once; beyond, a fast 503 with Retry-After.
    queue_max: int = 16
    # Memory one predict request may plan to use (estimated before its work: core/memory.py), and what the
    # requests of one worker may use together (a request waits for its share, within its time budget).
    request_memory_mb: int = 3072
    worker_memory_mb: int = 5120
    # Time budget of one predict request, checked between chunks of its work (0: none); jobs have none.
    request_timeout_s: float = 60
    # Whole-slide jobs: job folders live in data_dir, the queue in job_store (empty: SQLite in data_dir;
    # postgresql://… for replicas sharing it); a job may name a slide by a path relative to slide_root (none:
    # uploads only). With spark_master (local[N] or spark://host:7077), Spark's executors analyse the slides.
    data_dir: Path = ROOT / "var"
    job_store: str = ""
    spark_master: str = ""
    slide_root: Path | None = None
    max_slide_bytes: int = 8 * 1024**3
    job_stale_s: int = 60
    job_attempts: int = 2
    # Jobs waiting in the queue at most; a submission beyond is a 503 with Retry-After.
    max_queued_jobs: int = 20
    # Jobs one client (its address) may have queued or running; the next is a 429 with Retry-After.
    max_jobs_per_client: int = 5

    def forward_thread_count(self) -> int:
        """The threads of one forward pass in each worker; 0 leaves the runtimes' defaults."""
        if self.forward_threads or self.workers <= 1:
            return self.forward_threads
        return max(1, host.usable_cores() // self.workers)

    def pins_workers(self) -> bool:
        """Whether each worker runs on a core of its own: MMAX_PIN_WORKERS and one worker per core. Not with
        MMAX_RUNTIME=tensorflow, whose thread pools cannot be told to spread beyond the worker's core, nor with
        MMAX_SPARK_MASTER, whose local executors a worker starts (they would inherit its core)."""
        return (self.pin_workers and self.runtime != "tensorflow" and not self.spark_master
                and host.one_core_per_worker(self.workers))

    def model_forward_threads(self, every_core: bool) -> int | None:
        """The threads of one model's forward passes: every usable core (CPU affinity, a container's CPU quota)
        for a model whose every request is one large image (``ModelBase.forward_on_every_core``) unless
        MMAX_FORWARD_THREADS is set; otherwise None, the process's setting (forward_thread_count, per worker)."""
        return host.usable_cores() if every_core and not self.forward_threads else None

    @classmethod
    def from_env(cls) -> "Config":
        models = _env("MODELS", "all").strip()
        runtime = _env("RUNTIME", "auto")
        if runtime not in {"auto", "onnx", "tensorflow"}:
            raise SystemExit(f"setting MMAX_RUNTIME must be auto, onnx or tensorflow, not '{runtime}'")
        worker_memory_mb = _env_int("WORKER_MEMORY_MB", 5120)
        return cls(
            host=_env("HOST", "0.0.0.0"),
            port=_env_int("PORT", 5000),
            workers=_env_int("WORKERS", 0) or host.auto_workers(worker_memory_mb * 2**20),
            threads=_env_int("THREADS", 4),
            forward_threads=_env_int("FORWARD_THREADS", 0),
            pin_workers=_env_bool("PIN_WORKERS", True),
            timeout_s=_env_int("TIMEOUT", 120),
            assets_dir=Path(_env("ASSETS_DIR", str(ROOT / "assets"))),
            models=None if models in {"", "all"} else tuple(m.strip() for m in models.split(",") if m.strip()),
            max_upload_bytes=_env_int("MAX_UPLOAD_BYTES", 64 * 1024 * 1024),
            upload_timeout_s=_env_int("UPLOAD_TIMEOUT_S", 300),
            max_image_pixels=_env_int("MAX_IMAGE_PIXELS", 64_000_000),
            cors=_env_bool("CORS", False),
            api_key=_env("API_KEY", "") or None,
            log_level=_env("LOG_LEVEL", "INFO"),
            runtime=runtime,
            network_cache=Path(_env("NETWORK_CACHE", str(ROOT / ".cache" / "networks"))),
            batch_max=_env_int("BATCH_MAX", 32),
            batch_wait_ms=_env_int("BATCH_WAIT_MS", 2),
            queue_max=_env_int("QUEUE_MAX", 16),
            request_timeout_s=_env_int("REQUEST_TIMEOUT_S", 60),
            request_memory_mb=_env_int("REQUEST_MEMORY_MB", 3072),
            worker_memory_mb=worker_memory_mb,
            data_dir=Path(_env("DATA_DIR", str(ROOT / "var"))),
            job_store=_env("JOB_STORE", "").strip(),
            spark_master=_env("SPARK_MASTER", "").strip(),
            slide_root=Path(_env("SLIDE_ROOT", "")) if _env("SLIDE_ROOT", "") else None,
            max_slide_bytes=_env_int("MAX_SLIDE_BYTES", 8 * 1024**3),
            job_stale_s=_env_int("JOB_STALE_S", 60),
            max_queued_jobs=_env_int("MAX_QUEUED_JOBS", 20),
            max_jobs_per_client=_env_int("MAX_JOBS_PER_CLIENT", 5),
            job_attempts=_env_int("JOB_ATTEMPTS", 2),
        )
