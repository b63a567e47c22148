"""``/health``: liveness (the process answers) and readiness (every enabled model loaded and warmed)."""
from __future__ import annotations

from flask_restx import Namespace, Resource

from api import schemas
from core.registry import ModelRegistry


def create_namespace(registry: ModelRegistry) -> Namespace:
    ns = Namespace("health", description="Liveness and readiness probes")
    ns.add_model(schemas.health.name, schemas.health)

    @ns.route("/live", doc={"security": []})
    class Live(Resource):
        @ns.doc(id="health_live")
        @ns.response(200, "the process serves requests", schemas.health)
        def get(self):
            """200 while the process serves requests."""
            return {"status": "ok"}

    @ns.route("/ready", doc={"security": []})
    class Ready(Resource):
        @ns.doc(id="health_ready")
        @ns.response(200, "every enabled model answered its warm-up call", schemas.health)
        @ns.response(503, "some model is loading or failed", schemas.health)
        def get(self):
            """200 only once every enabled model has loaded and answered a warm-up call."""
            if registry.ready:
                return {"status": "ok", "models": dict(registry.state)}
            waiting = {m: s for m, s in registry.state.items() if s != "ready"}
            message = "; ".join(f"{m}: {registry.errors.get(m, s)}" for m, s in waiting.items())
            return {"status": "error", "message": f"not ready: {message}", "models": dict(registry.state)}, 503

    return ns
