"""Every job route: submission at ``POST /model/<id>/jobs``, then ``/jobs`` for status, results and deletion.

The namespace is mounted at the root so that submission keeps its place under the model it runs.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import current_app, request, send_file
from flask_restx import Namespace, Resource

from api import schemas
from api.forms import form_and_files, take_sample_id
from core.errors import ClientError
from core.jobs import RESULT_FILES, JobNotDone, JobRunner
from core.options import parse_options
from core.registry import ModelRegistry
from core.wsi.slide_model import SlideModel

JOB_ID_PATTERN = "^[0-9a-f]{32}$"
JOB_ID_HELP = "the id answered by POST /model/{id}/jobs (32 hexadecimal characters)"
MIMETYPES = {"result": "application/json", "heatmap": "image/png", "geojson": "application/geo+json"}


def _time(stamp: float | None) -> str | None:
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds") if stamp else None


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    out = {"id": job["id"], "model": job["model"], "status": job["status"], "progress": job["progress"],
           "message": job["message"], "attempts": job["attempts"], "slide": job["slide_name"],
           "created": _time(job["created"]), "updated": _time(job["updated"]),
           "links": {"self": f"/jobs/{job['id']}"}, "sample_id": job["sample_id"]}
    if job["status"] == "done":
        out["links"].update({key: f"/jobs/{job['id']}/{'heatmap.png' if key == 'heatmap' else key}"
                             for key in RESULT_FILES})
    return out


def submit_form(ns: Namespace, model: SlideModel):
    """The Swagger form of one slide model's job: the slide (upload or path) and exactly its options, typed."""
    parser = schemas.form(ns, [("slide", False, "the slide file to upload (SVS, tiled TIFF, NDPI, ...; single-file "
                                                "formats)")], [o for o in model.declared_options() if o.name != "format"])
    parser.add_argument("slide_path", location="form", type=str, required=False,
                        help="or: the slide's path relative to the server's slide root (MMAX_SLIDE_ROOT)")
    return parser


def client_identity() -> str:
    """Who submits, for the per-client job quota: the client's address (behind a proxy every client has the
    proxy's; the one API key, when set, is everyone's and tells clients no apart)."""
    return f"address:{request.remote_addr}"


def submit(registry: ModelRegistry, runner: JobRunner, model_id: str) -> tuple[dict, int, dict]:
    """Queue a slide for ``model_id`` from the request: checked now (model, options, a readable slide)."""
    config = current_app.config["MMAX"]
    model = registry.get(model_id)
    if not isinstance(model, SlideModel):
        raise ClientError(f"model '{model_id}' does not analyse whole slides; use /model/{model_id}/predict")
    request.max_content_length = config.max_slide_bytes
    form, files = form_and_files(query=False)
    sample_id = take_sample_id(form)
    given = {key: value for key, value in form.items() if key != "slide_path"}
    declared = tuple(o for o in model.declared_options() if o.name != "format")
    options = parse_options(declared, given, ignore=set(files) | {"slide_path"})
    unexpected = sorted(set(files) - {"slide"})
    if unexpected:
        raise ClientError(f"unexpected file field(s) {', '.join(unexpected)}; send the slide in 'slide'")
    job = runner.store.submit(model, options, upload=files.get("slide"), slide_path=form.get("slide_path"),
                              slide_root=config.slide_root, sample_id=sample_id, client=client_identity())
    runner.wake()
    return job_json(job), 202, {"Location": f"/jobs/{job['id']}"}


def create_namespace(registry: ModelRegistry, runner: JobRunner) -> Namespace:
    ns = Namespace("jobs", description="Whole-slide jobs: submission, status, progress and results")
    for schema in (schemas.error, schemas.job_links, schemas.job, schemas.job_list):
        ns.add_model(schema.name, schema)
    store = runner.store
    @ns.route("model/<string:model_id>/jobs")
    @ns.hide  # each slide model documents its own route (below); this one serves clients that build the URL
    class Submit(Resource):
        def post(self, model_id: str):
            return submit(registry, runner, model_id)

    def submit_route(model_id: str) -> None:
        form = submit_form(ns, registry.models[model_id])

        class SubmitOne(Resource):
            @ns.doc(id=f"submit_job_{model_id}")
            @ns.expect(form)
            @ns.response(202, "queued; follow it at /jobs/{job_id} (the Location header)", schemas.job)
            @ns.response(400, "bad option or missing slide", schemas.error)
            @ns.response(403, "slide path outside the slide root", schemas.error)
            @ns.response(404, "no such slide", schemas.error)
            @ns.response(413, "upload too large", schemas.error)
            @ns.response(415, "not a slide OpenSlide or Pillow can read", schemas.error)
            @ns.response(429, "this client has MMAX_MAX_JOBS_PER_CLIENT jobs queued or running: submit again "
                              "after Retry-After seconds", schemas.error)
            @ns.response(503, "the queue is full (MMAX_MAX_QUEUED_JOBS): submit again after Retry-After seconds",
                         schemas.error)
            def post(self, model_id: str):
                return submit(registry, runner, model_id)

        SubmitOne.post.__doc__ = (f"{registry.models[model_id].spec.name} ({model_id}) on a whole slide, as a job: "
                                  f"upload it ('slide') or name it under the slide root ('slide_path').")
        ns.add_resource(SubmitOne, f"model/{model_id}/jobs", endpoint=f"submit_job_{model_id}",
                        defaults={"model_id": model_id})

    for model_id, model in registry.models.items():
        if isinstance(model, SlideModel):
            submit_route(model_id)

    @ns.route("jobs")
    class JobList(Resource):

        @ns.response(200, "the most recent jobs, newest first", schemas.job_list)
        def get(self):
            """The 100 most recent jobs."""
            return {"jobs": [job_json(job) for job in store.recent(100)]}

    @ns.route("jobs/<string:job_id>")
    @ns.param("job_id", JOB_ID_HELP, pattern=JOB_ID_PATTERN)
    @ns.response(400, "malformed job id", schemas.error)
    @ns.response(401, "API key missing or wrong", schemas.error)
    @ns.response(404, "no such job", schemas.error)
    class Job(Resource):

        @ns.response(200, "status and progress", schemas.job)
        def get(self, job_id: str):
            """A job's status (queued, running, done, failed), progress 0-1 and links to its results."""
            return job_json(store.get(job_id))

        @ns.response(200, "a queued or running job: cancelled (a running one stops at its next block); a job "
                          "that has ended: deleted", schemas.job)
        def delete(self, job_id: str):
            """Cancel a queued or running job; or forget one that has ended (done, failed, cancelled) and delete
            its files (an uploaded slide included)."""
            job = store.get(job_id)
            if job["status"] in {"queued", "running"}:
                return job_json(store.cancel(job_id))
            store.delete(job_id)
            return job_json(job)

    def result_route(key: str, url: str) -> None:
        @ns.route(f"jobs/<string:job_id>/{url}", endpoint=f"job_{key}")
        @ns.param("job_id", JOB_ID_HELP, pattern=JOB_ID_PATTERN)
        @ns.response(400, "malformed job id", schemas.error)
        @ns.response(401, "API key missing or wrong", schemas.error)
        @ns.response(404, "no such job", schemas.error)
        @ns.response(409, "not done (yet)", schemas.error)
        class Result(Resource):

            @ns.doc(id=f"get_job_{key}")
            @ns.produces(sorted({MIMETYPES[key], "application/json"}))  # errors are JSON
            @ns.response(200, f"the job's {key} ({MIMETYPES[key]})")
            def get(self, job_id: str):
                job = store.get(job_id)
                if job["status"] != "done":
                    raise JobNotDone(f"job '{job_id}' is {job['status']}: {job['message']}")
                path = store.folder(job_id) / RESULT_FILES[key]
                return send_file(path, mimetype=MIMETYPES[key], download_name=f"{job_id}-{RESULT_FILES[key]}")

        Result.get.__doc__ = {"result": "The job's full result (JSON).",
                              "heatmap": "The slide's heatmap (PNG).",
                              "geojson": "The job's regions as GeoJSON (QuPath: File > Import objects)."}[key]

    for key, url in (("result", "result"), ("heatmap", "heatmap.png"), ("geojson", "geojson")):
        result_route(key, url)
    return ns
