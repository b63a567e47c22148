"""The models a service instance serves: found in the assets folder, checked at start-up, loaded once."""
from __future__ import annotations

import importlib
import logging
import threading
import time
from pathlib import Path

from core import memory
from core.assets import ModelSpec, discover, read_spec
from core.errors import AssetError, ModelNotFound, ModelNotReady
from core.model_base import MicroscopyModel

log = logging.getLogger(__name__)

LOADING, READY, FAILED = "loading", "ready", "failed"


def model_class(model_id: str) -> type[MicroscopyModel]:
    """The class in ``core/models/<id>.py``; importing it loads no weights."""
    try:
        module = importlib.import_module(f"core.models.{model_id}")
    except ModuleNotFoundError as exc:
        if exc.name == f"core.models.{model_id}":
            raise AssetError(f"model '{model_id}' has assets but no code in core/models/{model_id}.py") from None
        raise
    return module.MODEL_CLASS


class ModelRegistry:
    def __init__(self, assets_dir: Path, enabled: tuple[str, ...] | None = None):
        available = discover(assets_dir)
        if enabled is None:
            enabled = tuple(available)
        missing = [model_id for model_id in enabled if model_id not in available]
        if missing:
            raise AssetError(f"enabled model(s) {', '.join(missing)} have no {assets_dir}/<id>/model.json "
                             f"(available: {', '.join(available) or 'none'})")
        self.models: dict[str, MicroscopyModel] = {}
        for model_id in enabled:
            spec: ModelSpec = read_spec(assets_dir / model_id)
            model = model_class(model_id)(spec)
            model.verify()  # fail start-up now, naming the file, not at the first request
            self.models[model_id] = model
        self.state: dict[str, str] = {model_id: LOADING for model_id in self.models}
        self.errors: dict[str, str] = {}
        self._thread: threading.Thread | None = None

    # ---- loading ---------------------------------------------------------------------------------
    def load_all(self) -> None:
        for model_id, model in self.models.items():
            started = time.perf_counter()
            try:
                model.load()
                model.warm_up()
            except Exception as exc:  # noqa: BLE001 - a failed model is reported by /health/ready
                log.exception("model %s failed to load", model_id)
                self.errors[model_id] = f"{type(exc).__name__}: {exc}"
                self.state[model_id] = FAILED
                continue
            self.state[model_id] = READY
            log.info("model %s ready in %.1f s", model_id, time.perf_counter() - started)
        memory.mark_ready()

    def start_loading(self) -> None:
        """Load and warm every model in a background thread, so liveness answers while it runs."""
        self._thread = threading.Thread(target=self.load_all, name="model-loader", daemon=True)
        self._thread.start()

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    # ---- queries -----------------------------------------------------------------------------------
    @property
    def settled(self) -> bool:
        """Loading is over (every model ready or failed)."""
        return LOADING not in self.state.values()

    @property
    def ready(self) -> bool:
        return all(state == READY for state in self.state.values())

    @property
    def ready_ids(self) -> list[str]:
        """The models loaded and answering."""
        return [model_id for model_id, state in self.state.items() if state == READY]

    def get(self, model_id: str) -> MicroscopyModel:
        if model_id not in self.models:
            raise ModelNotFound(f"unknown model '{model_id}'; available: {', '.join(self.models) or 'none'}")
        return self.models[model_id]

    def get_ready(self, model_id: str) -> MicroscopyModel:
        model = self.get(model_id)
        if self.state[model_id] == LOADING:
            raise ModelNotReady(f"model '{model_id}' is still loading; retry shortly")
        if self.state[model_id] == FAILED:
            raise ModelNotReady(f"model '{model_id}' failed to load: {self.errors[model_id]}")
        return model
