"""Whole-slide jobs: submitted, followed, finished; durable across restarts and dead runners; paths confined."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.jobs import JobStore
from tests.conftest import SVS, config_with, make_app, needs
from tests.images import encode, pyramid_tiff, section


def wait_for(client, job_id: str, statuses=("done", "failed"), timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").get_json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job['message']}")


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slides")
    pyramid_tiff(root / "section.tif", section((1024, 768), dark_square=(400, 300, 200)), mpp=0.5, levels=2)
    (root / "cases").mkdir()
    pyramid_tiff(root / "cases" / "other.tif", section((512, 384), seed=1), mpp=0.5, levels=1)
    outside = root.parent / "outside.tif"
    pyramid_tiff(outside, section((256, 256)), mpp=0.5, levels=1)
    (root / "link.tif").symlink_to(outside)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def new_queue(request):
    """Each test of this module runs against both job stores: called, a fresh, empty queue's setting
    (MMAX_JOB_STORE: empty for SQLite in the data dir, a new PostgreSQL database)."""
    if request.param == "sqlite":
        return lambda: ""
    return request.getfixturevalue("postgresql_server").new_database


@pytest.fixture(scope="module")
def settings(slides, tmp_path_factory, new_queue):
    return config_with(models=("metastasis",), slide_root=slides, job_stale_s=2, job_attempts=2,
                       data_dir=tmp_path_factory.mktemp("data"), job_store=new_queue())


def store_of(config, **limits) -> JobStore:
    return JobStore(config.data_dir, database=config.job_store, **limits)


@pytest.fixture(scope="module")
def jobs_client(settings):
    return make_app(settings).test_client()


def submit(client, model="metastasis", **data):
    return client.post(f"/model/{model}/jobs", data=data, content_type="multipart/form-data")


def test_uploaded_slide_runs_to_done_with_heatmap_geojson_and_result(jobs_client, slides):
    response = submit(jobs_client, slide=(io.BytesIO((slides / "section.tif").read_bytes()), "section.tif"))
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/jobs/{job['id']}" and job["status"] in {"queued", "running"}
    done = wait_for(jobs_client, job["id"])
    assert done["status"] == "done" and done["progress"] == 1.0 and done["attempts"] == 1
    result = jobs_client.get(done["links"]["result"])
    body = result.get_json()
    assert result.status_code == 200 and body["slide"]["levels"] == 2 and body["slide"]["mpp"] == 0.5
    assert body["level_read"] == 0 and body["grid"]["tissue_cells"] > 0   # 0.5 um/px is the level to read
    heatmap = jobs_client.get(done["links"]["heatmap"])
    assert heatmap.mimetype == "image/png" and Image.open(io.BytesIO(heatmap.data)).width == 1024
    geojson = jobs_client.get(done["links"]["geojson"])
    assert json.loads(geojson.data)["type"] == "FeatureCollection"
    listed = jobs_client.get("/jobs").get_json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]


def test_slide_named_under_the_slide_root_with_options(jobs_client):
    response = submit(jobs_client, slide_path="cases/other.tif", threshold="0", mpp="1.0")
    assert response.status_code == 202
    done = wait_for(jobs_client, response.get_json()["id"])
    body = jobs_client.get(done["links"]["result"]).get_json()
    assert body["slide"]["mpp"] == 1.0  # the option overrode the file's 0.5
    assert len(body["tumor_regions"]) >= 1  # threshold 0: all tissue is "above"


@pytest.mark.parametrize("path, status", [
    ("../outside.tif", 403), ("/etc/passwd", 403), ("link.tif", 403), ("cases/../../outside.tif", 403),
    ("absent.tif", 404), ("cases", 404),
])
def test_slide_paths_are_confined_to_the_slide_root(jobs_client, path, status):
    response = submit(jobs_client, slide_path=path)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["status"] == "error"


def test_bad_submissions_are_4xx(jobs_client, app):
    assert submit(jobs_client).status_code == 400  # no slide at all
    response = submit(jobs_client, slide=(io.BytesIO(b"definitely not a slide"), "x.svs"))
    assert response.status_code == 415 and "x.svs" in response.get_json()["message"]
    assert submit(jobs_client, slide=(io.BytesIO(b""), "empty.svs")).status_code == 400
    assert submit(jobs_client, slide_path="section.tif", threshold="2").status_code == 400
    assert submit(jobs_client, slide_path="section.tif", colour="red").status_code == 400
    assert submit(jobs_client, model="nope", slide_path="section.tif").status_code == 404
    client = app.test_client()  # every model; no slide root configured
    response = submit(client, model="leukocyte", slide_path="x.svs")
    assert response.status_code == 400 and "whole slides" in response.get_json()["message"]
    response = submit(client, slide_path="x.svs")
    assert response.status_code == 400 and "slide root" in response.get_json()["message"]


def test_job_ids_and_unfinished_results(jobs_client, settings):
    assert jobs_client.get("/jobs/not-a-job").status_code == 400
    assert jobs_client.get("/jobs/" + "0" * 32).status_code == 404
    assert jobs_client.get("/jobs/" + "0" * 32 + "/heatmap.png").status_code == 404
    store = store_of(settings)
    job_id = store.new_id()
    store.create(job_id, "metastasis", Path("/nowhere.svs"), "nowhere.svs", {})
    store.update(job_id, status="failed", message="failed: for this test")
    response = jobs_client.get(f"/jobs/{job_id}/result")
    assert response.status_code == 409 and "for this test" in response.get_json()["message"]
    assert jobs_client.delete(f"/jobs/{job_id}").status_code == 200
    assert jobs_client.get(f"/jobs/{job_id}").status_code == 404


def test_jobs_survive_a_restart_and_dead_runners(settings, slides, new_queue):
    """Jobs written by a server that then stopped: one queued, one running with a dead runner, one that
    already used its attempts. A new server finishes the first two and fails the third with the reason."""
    config = config_with(models=("metastasis",), data_dir=settings.data_dir.parent / "restart", job_stale_s=2,
                         job_attempts=2, job_store=new_queue())
    store = store_of(config)
    options = {"mpp": 0.0, "threshold": 0.5, "tissue_only": True}
    ids = {name: store.new_id() for name in ("queued", "orphaned", "exhausted")}
    for name, job_id in ids.items():
        store.create(job_id, "metastasis", slides / "cases" / "other.tif", "other.tif", options)
    for name, attempts in (("orphaned", 0), ("exhausted", 1)):
        with store.db.connect() as db:  # as a runner that died mid-job leaves them
            db.execute("UPDATE jobs SET status = 'running', attempts = ?, heartbeat = 0, worker = 'gone:1' "
                       "WHERE id = ?", (attempts + 1, ids[name]))
    client = make_app(config).test_client()
    assert wait_for(client, ids["queued"])["status"] == "done"
    orphaned = wait_for(client, ids["orphaned"])
    assert orphaned["status"] == "done" and orphaned["attempts"] == 2
    exhausted = wait_for(client, ids["exhausted"])
    assert exhausted["status"] == "failed" and "stopped responding" in exhausted["message"]


def test_unwritable_data_dir_is_a_clear_start_up_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data dir should be")
    with pytest.raises(SystemExit, match="MMAX_DATA_DIR"):
        JobStore(blocker / "data")


@needs(SVS)
def test_real_aperio_slide_as_an_uploaded_job(jobs_client):
    response = submit(jobs_client, slide=(io.BytesIO(SVS.read_bytes()), SVS.name))
    assert response.status_code == 202
    done = wait_for(jobs_client, response.get_json()["id"])
    assert done["status"] == "done", done["message"]
    body = jobs_client.get(done["links"]["result"]).get_json()
    assert body["slide"]["vendor"] == "aperio" and body["slide"]["mpp"] == pytest.approx(0.499)
    # 2967x2220 px at 0.499 um/px are 47.6x35.6 cells of 31 um
    assert (body["grid"]["rows"], body["grid"]["cols"]) == (48, 36)
    assert 0.2 < body["grid"]["tissue_cells"] / (48 * 36) < 0.8


def test_a_running_job_cancelled_stops_at_its_next_block_and_stays_cancelled(tmp_path, slides, monkeypatch,
                                                                            new_queue):
    import core.wsi.engine
    from core.jobs import JobRunner

    store = JobStore(tmp_path / "data", database=new_queue())
    job_id = store.new_id()
    store.create(job_id, "metastasis", slides / "section.tif", "section.tif", {})
    blocks_done = []

    def analyse(model, slide, options, progress, checkpoint_path=None):
        progress(0.25, "block 1 of 4")
        blocks_done.append(1)
        store.cancel(job_id)  # a client's DELETE while block 2 is being scored
        progress(0.5, "block 2 of 4")
        blocks_done.append(2)

    class Registry:
        def get_ready(self, model_id):
            return object()

    monkeypatch.setattr(core.wsi.engine, "analyse_local", analyse)
    runner = JobRunner(store, Registry(), stale_s=60, max_attempts=2)
    runner.run(store.claim("test"))
    job = store.get(job_id)
    assert blocks_done == [1] and job["status"] == "cancelled" and job["message"] == "cancelled by request"
    assert not store.folder(job_id).exists()  # no half-written results


def test_a_queued_job_cancelled_is_never_claimed_and_then_deletes(jobs_client, settings, slides):
    store = store_of(settings)
    job_id = store.new_id()
    store.create(job_id, "metastasis", slides / "section.tif", "section.tif", {})
    assert store.cancel(job_id)["status"] == "cancelled"
    assert store.cancel(job_id)["status"] == "cancelled"  # cancelling twice is harmless
    assert jobs_client.get(f"/jobs/{job_id}").get_json()["status"] == "cancelled"
    assert jobs_client.delete(f"/jobs/{job_id}").status_code == 200  # ended: now forgotten
    assert jobs_client.get(f"/jobs/{job_id}").status_code == 404


def test_a_full_queue_is_a_503_with_retry_after_and_keeps_nothing(tmp_path, slides, new_queue):
    client = make_app(config_with(models=("metastasis",), data_dir=tmp_path / "data", max_queued_jobs=0,
                                  job_store=new_queue())).test_client()
    response = submit(client, slide=(io.BytesIO((slides / "section.tif").read_bytes()), "section.tif"))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert "submit again later" in response.get_json()["message"]
    assert not any((tmp_path / "data" / "jobs").iterdir())


def test_a_sample_id_goes_with_the_job_into_its_record_and_result(jobs_client, slides):
    response = submit(jobs_client, slide_path="section.tif", sample_id="S-17/0042")
    job = response.get_json()
    assert response.status_code == 202 and job["sample_id"] == "S-17/0042"
    done = wait_for(jobs_client, job["id"])
    result = jobs_client.get(done["links"]["result"]).get_json()
    assert result["sample_id"] == "S-17/0042" and result["job_id"] == job["id"] and len(result["weights_sha256"]) == 64


def test_a_single_level_slide_too_large_to_overview_is_refused_at_submission(jobs_client, tmp_path):
    """20,000² px declared in one tiled level (zero tiles, compressed: under a megabyte on disk)."""
    import tifffile

    side = (20_000 // 256 + 1) * 256
    path = tmp_path / "huge.tif"
    with tifffile.TiffWriter(path) as tif:
        tile = np.zeros((256, 256, 3), np.uint8)
        tif.write(iter([tile] * ((side // 256) ** 2)), shape=(side, side, 3), dtype=np.uint8, tile=(256, 256),
                  compression="zlib", photometric="rgb")
    assert path.stat().st_size < 2_000_000
    response = submit(jobs_client, slide=(io.BytesIO(path.read_bytes()), "huge.tif"), mpp="0.5")
    assert response.status_code == 413 and "smallest level" in response.get_json()["message"]
    assert jobs_client.get("/health/live").status_code == 200


def test_a_job_whose_grid_a_wrong_mpp_blows_up_is_refused(jobs_client):
    image = io.BytesIO(encode(Image.fromarray(section((2000, 2000)))))
    response = submit(jobs_client, slide=(image, "field.png"), mpp="50")
    assert response.status_code == 400 and "grid cells" in response.get_json()["message"]


@pytest.mark.parametrize("mpp", ["4.8e-262", "0.0001"])
def test_an_mpp_that_makes_a_grid_cell_larger_than_the_slide_is_a_400(jobs_client, mpp):
    image = io.BytesIO(encode(Image.fromarray(section((64, 64)))))
    response = submit(jobs_client, model="metastasis", slide=(image, "tiny.png"), mpp=mpp)
    assert response.status_code == 400 and "grid cell" in response.get_json()["message"]


def test_a_job_rerun_after_its_worker_died_resumes_from_its_finished_blocks(app, tmp_path, slides, monkeypatch,
                                                                           new_queue):
    """An attempt killed after two blocks leaves them in the job's checkpoint; the next attempt analyses only
    the other blocks and gives the answer an uninterrupted run gives. The checkpoint goes when the job ends."""
    import core.wsi.engine as engine
    from core.jobs import CHECKPOINT_FILE, JobRunner
    from core.wsi.slide import open_slide

    monkeypatch.setattr(engine, "BLOCK_CELLS", 4)  # many blocks from a small slide
    model = app.extensions["mmax_registry"].get_ready("metastasis")
    options = {"mpp": 0.0, "threshold": 0.5, "tissue_only": True}
    slide_path = slides / "section.tif"
    plan = model.plan(open_slide(slide_path), options)
    assert len(plan.blocks) >= 6
    uninterrupted = engine.analyse_local(model, open_slide(slide_path), options).result

    store = JobStore(tmp_path / "data", database=new_queue())
    job_id = store.new_id()
    store.create(job_id, "metastasis", slide_path, "section.tif", options)
    checkpoint = store.folder(job_id) / CHECKPOINT_FILE
    real_analyse_block, calls = engine.analyse_block, []

    def analyse_block(*args, **kwargs):
        if len(calls) == 2 and kill_after_two:
            raise KeyboardInterrupt("the worker dies")  # as SIGKILL would: nothing after this line runs
        calls.append(1)
        return real_analyse_block(*args, **kwargs)

    monkeypatch.setattr(engine, "analyse_block", analyse_block)
    kill_after_two = True
    with pytest.raises(KeyboardInterrupt):
        engine.analyse_local(model, open_slide(slide_path), options, checkpoint_path=checkpoint)
    assert len(checkpoint.read_text().splitlines()) == 1 + 2

    kill_after_two, calls[:] = False, []

    class Registry:
        def get_ready(self, model_id):
            return model

    JobRunner(store, Registry(), stale_s=60, max_attempts=2).run(store.claim("test"))
    assert store.get(job_id)["status"] == "done"
    assert len(calls) == len(plan.blocks) - 2  # the two finished blocks were not analysed again
    resumed = json.loads((store.folder(job_id) / "result.json").read_text())
    for key, value in uninterrupted.items():
        assert resumed[key] == value, key
    assert not checkpoint.exists()


def test_a_checkpoint_keeps_findings_exactly_and_ignores_what_is_not_its_own(tmp_path):
    from core.wsi.checkpoint import BlockCheckpoint

    grid = np.array([[0.25, np.nan], [1.0, 0.0]], np.float32)
    points = (np.zeros((2, 2), np.float32), [{"x": 3, "y": 4, "probability": 0.91, "subtype": "normal"}])
    checkpoint = BlockCheckpoint(tmp_path / "blocks.jsonl", "plan A")
    checkpoint.start({})
    checkpoint.add(0, grid, 1.5)
    checkpoint.add(3, points, None)
    done = checkpoint.load()
    assert sorted(done) == [0, 3] and done[0][1] == 1.5 and done[3][1] is None
    assert done[0][0].dtype == np.float32 and np.array_equal(done[0][0], grid, equal_nan=True)
    assert isinstance(done[3][0], tuple) and done[3][0][1] == points[1]
    with open(checkpoint.path, "a") as handle:
        handle.write('{"block": 5, "find')  # a process killed while writing
    assert sorted(checkpoint.load()) == [0, 3]
    checkpoint.start(checkpoint.load())  # the next attempt writes it afresh, without the cut line
    checkpoint.add(5, grid, 2.0)
    assert sorted(checkpoint.load()) == [0, 3, 5]
    assert BlockCheckpoint(checkpoint.path, "plan B").load() == {}  # other weights, grid or options


def test_one_client_may_have_only_its_share_of_unfinished_jobs(app, tmp_path, slides, new_queue):
    from core.jobs import TooManyJobs

    model = app.extensions["mmax_registry"].get_ready("metastasis")
    store = JobStore(tmp_path / "data", max_queued=20, max_per_client=2, database=new_queue())
    options = {"mpp": 0.0, "threshold": 0.5, "tissue_only": True}
    for _ in range(2):
        store.submit(model, options, slide_path="section.tif", slide_root=slides, client="address:10.0.0.1")
    with pytest.raises(TooManyJobs, match="limit per client is 2"):
        store.submit(model, options, slide_path="section.tif", slide_root=slides, client="address:10.0.0.1")
    other = store.submit(model, options, slide_path="section.tif", slide_root=slides, client="address:10.0.0.2")
    assert other["status"] == "queued"
    ended = next(job["id"] for job in store.recent() if job["client"] == "address:10.0.0.1")
    store.cancel(ended)  # one of the first client's jobs ends: it may submit again
    store.submit(model, options, slide_path="section.tif", slide_root=slides, client="address:10.0.0.1")

    client = make_app(config_with(models=("metastasis",), data_dir=tmp_path / "api", max_jobs_per_client=0,
                                  job_store=new_queue())).test_client()
    response = submit(client, slide=(io.BytesIO((slides / "section.tif").read_bytes()), "section.tif"))
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert "MMAX_MAX_JOBS_PER_CLIENT" in response.get_json()["message"]
    assert not any((tmp_path / "api" / "jobs").iterdir())


def test_a_runner_claims_only_jobs_of_the_models_it_serves(tmp_path, slides, new_queue):
    """Processes sharing one queue may serve different models: each takes only the jobs it can run."""
    store = JobStore(tmp_path / "data", database=new_queue())
    other, ours = store.new_id(), store.new_id()
    store.create(other, "mitosis", slides / "section.tif", "section.tif", {})
    store.create(ours, "metastasis", slides / "section.tif", "section.tif", {})
    assert store.claim("test", models=[]) is None
    assert store.claim("test", models=["metastasis"])["id"] == ours
    assert store.claim("test", models=["metastasis"]) is None  # the mitosis job waits for a mitosis server
    client = make_app(config_with(models=("metastasis",), data_dir=tmp_path / "data", job_store=store.database_url)
                      ).test_client()
    time.sleep(3)  # several polls of this app's runner
    assert client.get(f"/jobs/{other}").get_json()["status"] == "queued"
    assert store.claim("test")["id"] == other  # any model: the oldest first


def test_runners_racing_for_one_queue_claim_each_job_exactly_once(tmp_path, slides, new_queue):
    """Eight runners (as eight replicas would) claim from one queue at once: no job twice, none left."""
    from concurrent.futures import ThreadPoolExecutor

    url = new_queue()
    stores = [JobStore(tmp_path / "data", database=url) for _ in range(8)]
    created = set()
    for _ in range(40):
        job_id = stores[0].new_id()
        stores[0].create(job_id, "metastasis", slides / "section.tif", "section.tif", {})
        created.add(job_id)

    def drain(k: int) -> list[str]:
        claimed = []
        while (job := stores[k].claim(f"runner-{k}", models=["metastasis"])) is not None:
            claimed.append(job["id"])
        return claimed

    with ThreadPoolExecutor(8) as pool:
        claimed = [job_id for batch in pool.map(drain, range(8)) for job_id in batch]
    assert sorted(claimed) == sorted(created)
    assert {job["attempts"] for job in stores[0].recent()} == {1}


def test_two_servers_on_one_queue_share_its_jobs(tmp_path, slides, new_queue):
    """Two replicas on one queue and one shared data dir: a job submitted to one is run once and read from
    either."""
    url, data_dir = new_queue(), tmp_path / "shared"
    first, second = (make_app(config_with(models=("metastasis",), data_dir=data_dir, job_store=url, slide_root=slides)
                              ).test_client() for _ in range(2))
    job = submit(first, slide=(io.BytesIO((slides / "section.tif").read_bytes()), "section.tif")).get_json()
    done = wait_for(second, job["id"])
    assert done["status"] == "done" and done["attempts"] == 1
    assert first.get(f"/jobs/{job['id']}/result").get_json() == second.get(f"/jobs/{job['id']}/result").get_json()
    assert second.get(f"/jobs/{job['id']}/result").get_json()["engine"] == "local"


def test_a_job_store_that_cannot_be_reached_is_a_503_and_a_clear_start_up_error(tmp_path, slides,
                                                                                 postgresql_server):
    from core.job_db import JobStoreUnavailable

    url = postgresql_server.new_database()
    store = JobStore(tmp_path / "data", database=url)
    unreachable = url.replace("port=5432", "port=1")
    with pytest.raises(SystemExit, match="MMAX_JOB_STORE"):
        JobStore(tmp_path / "data", database=unreachable)
    store.db.url = unreachable  # the server goes away while the service runs
    with pytest.raises(JobStoreUnavailable, match="try again later") as refused:
        store.recent()
    assert refused.value.status == 503 and "/tmp" not in refused.value.message
    with pytest.raises(SystemExit, match="MMAX_JOB_STORE must be"):
        JobStore(tmp_path / "data", database="mysql://somewhere/db")
