"""microscopy-max: ``create_app()`` for gunicorn (``gunicorn "app:create_app()"``); ``python app.py`` for development."""
from __future__ import annotations

import logging
import os
from functools import partial

from flask import Flask

from config import Config


def create_app(config: Config | None = None) -> Flask:
    """Check every enabled model's assets now, then load and warm them in the background."""
    config = config or Config.from_env()
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from PIL import Image

    from api import build_api
    from api.admission import Admission
    from api.metrics import observe_batch, observe_queue_wait, observe_rejection
    from core import memory, runtime
    from core.jobs import JobRunner, JobStore
    from core.registry import ModelRegistry

    # Pillow's own bomb guard (error at twice its limit) must not undercut the configured pixel limit.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, config.max_image_pixels)

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=config.max_upload_bytes, MMAX=config, ERROR_404_HELP=False,
                      RESTX_MASK_SWAGGER=False, SWAGGER_UI_DOC_EXPANSION="list")
    if config.forward_threads:  # gunicorn's workers divide the cores among themselves (gunicorn.conf.py)
        runtime.limit_threads(config.forward_threads)
    registry = ModelRegistry(config.assets_dir, config.models)
    for model_id, model in registry.models.items():
        model.configure(config.runtime, config.batch_max, config.batch_wait_ms, partial(observe_batch, model_id),
                        partial(observe_queue_wait, model_id), network_cache=config.network_cache,
                        forward_threads=config.model_forward_threads(model.forward_on_every_core))
    app.extensions["mmax_registry"] = registry
    app.extensions["mmax_admission"] = Admission(config.queue_max, observe_rejection)
    app.extensions["mmax_memory"] = memory.MemoryBudget(config.request_memory_mb * 2**20,
                                                         config.worker_memory_mb * 2**20)
    store = JobStore(config.data_dir, config.max_queued_jobs, config.max_jobs_per_client, config.job_store)
    jobs = JobRunner(store, registry, config.job_stale_s, config.job_attempts, spark_master=config.spark_master,
                     assets_dir=config.assets_dir)
    app.extensions["mmax_jobs"] = jobs
    if config.cors:
        from flask_cors import CORS

        CORS(app)
    build_api(app, registry, jobs)
    app.teardown_request(lambda error: memory.release_if_grown())  # large requests' memory goes back
    registry.start_loading()
    jobs.start()
    return app


def preflight(config: Config) -> None:
    """Check the assets and the data dir once, before any worker starts (gunicorn's on_starting): a bad
    setting stops the server with one line naming it, instead of workers failing to boot in a loop. The
    networks the cache lacks are converted here too, once, rather than by every worker."""
    from core import onnx_cache
    from core.errors import AssetError
    from core.jobs import JobStore
    from core.registry import ModelRegistry

    try:
        registry = ModelRegistry(config.assets_dir, config.models)
    except AssetError as exc:
        raise SystemExit(f"cannot start: {exc}") from None
    JobStore(config.data_dir, database=config.job_store)
    if config.runtime != "tensorflow":
        try:
            onnx_cache.ensure([network for model in registry.models.values()
                               for network in model.network_files().values()], config.network_cache)
        except AssetError as exc:  # each worker tries again and reports the model that fails in /health/ready
            logging.getLogger(__name__).warning("%s", exc)


if __name__ == "__main__":
    settings = Config.from_env()
    create_app(settings).run(host=settings.host, port=settings.port, threaded=True)
