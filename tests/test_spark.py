"""``python -m core.wsi predict``: the local and the Spark engine give the same answer on the same slide."""
from __future__ import annotations

import io
import json
import shutil
import time

import numpy as np
import pytest

from core.wsi.__main__ import main as wsi_main
from tests.conftest import config_with, make_app
from tests.images import pyramid_tiff, section
from tests.test_mitosis import he_field


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or newer)")
def test_spark_and_local_engines_agree(tmp_path):
    slide = tmp_path / "section.tif"
    pyramid_tiff(slide, section((1024, 768), dark_square=(400, 300, 200)), mpp=0.5, levels=2)
    grids = {}
    for engine in ("local", "spark"):
        out = tmp_path / engine
        args = ["predict", str(slide), "--engine", engine, "--out", str(out), "--option", "threshold=0.3"]
        assert wsi_main(args + (["--master", "local[2]", "--partitions", "3"] if engine == "spark" else [])) == 0
        result = json.loads((out / "result.json").read_text())
        assert result["engine"] == engine and (out / "heatmap.png").stat().st_size > 0
        assert json.loads((out / "regions.geojson").read_text())["type"] == "FeatureCollection"
        grids[engine] = np.array(result["grid"]["probabilities"], dtype=float)
    assert np.isfinite(grids["local"]).sum() > 100
    np.testing.assert_allclose(grids["spark"], grids["local"], atol=1e-6, equal_nan=True)


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or newer)")
def test_spark_and_local_find_the_same_mitoses_once_across_block_borders(tmp_path):
    """Two blocks of 4,096 px at 0.25 um/px; two nuclei lie within a window's margin of the border between them."""
    nuclei = ((300, 300), (4080, 600), (4112, 900), (4300, 400))
    rgb = np.full((1200, 4400, 3), 244, np.uint8)
    rgb[100:1100, 100:4350] = np.asarray(he_field((4400, 1200), blobs=nuclei))[100:1100, 100:4350]
    slide = tmp_path / "mitoses.tif"
    pyramid_tiff(slide, rgb, mpp=0.25)
    points = {}
    for engine in ("local", "spark"):
        out = tmp_path / engine
        args = ["predict", str(slide), "--model", "mitosis", "--engine", engine, "--out", str(out),
                "--option", "threshold=0"]
        assert wsi_main(args + (["--master", "local[2]", "--partitions", "2"] if engine == "spark" else [])) == 0
        result = json.loads((out / "result.json").read_text())
        assert result["engine"] == engine
        points[engine] = sorted((m["x"], m["y"], m["probability"], m["subtype"]) for m in result["predictions"])
    assert points["spark"] == points["local"] and len(points["local"]) == len(nuclei)
    found = np.array([(x, y) for x, y, _, _ in points["local"]])
    assert all(np.hypot(*(found - n).T).min() <= 3 for n in nuclei)


def test_cli_refuses_what_it_cannot_do(tmp_path, capsys):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"no slide")
    assert wsi_main(["predict", str(junk)]) == 2
    assert "junk.svs" in capsys.readouterr().err
    image = tmp_path / "plain.tif"
    pyramid_tiff(image, section((256, 256)), mpp=0.5, levels=1)
    assert wsi_main(["predict", str(image), "--model", "leukocyte"]) == 2
    assert wsi_main(["predict", str(image), "--option", "threshold=7"]) == 2


def spark_job(client, slide) -> tuple[dict, list[str]]:
    """Submit ``slide``, follow the job to its end: its record and every progress message seen."""
    response = client.post("/model/metastasis/jobs", data={"slide": (io.BytesIO(slide.read_bytes()), slide.name)},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job_id, notes, deadline = response.get_json()["id"], [], time.monotonic() + 240
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").get_json()
        notes.append(job["message"])
        if job["status"] in {"done", "failed"}:
            return job, notes
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']}: {job['message']}")


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or newer)")
def test_a_job_on_spark_answers_what_a_local_job_answers_and_says_so(tmp_path):
    slide = tmp_path / "section.tif"
    pyramid_tiff(slide, section((1024, 768), dark_square=(400, 300, 200)), mpp=0.5, levels=2)
    results = {}
    for engine, master in (("local", ""), ("spark", "local[2]")):
        client = make_app(config_with(models=("metastasis",), data_dir=tmp_path / engine, spark_master=master)
                          ).test_client()
        job, notes = spark_job(client, slide)
        assert job["status"] == "done", job["message"]
        results[engine] = client.get(f"/jobs/{job['id']}/result").get_json()
        assert results[engine].pop("engine") == engine and results[engine].pop("job_id") == job["id"]
        if engine == "spark":
            assert any(note.startswith("Spark: ") and "tasks done" in note for note in notes), notes
    assert results["spark"] == results["local"]


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or newer)")
def test_a_failing_executor_fails_the_job_saying_why(tmp_path):
    slide = tmp_path / "section.tif"
    pyramid_tiff(slide, section((512, 384)), mpp=0.5, levels=1)
    app = make_app(config_with(models=("metastasis",), data_dir=tmp_path / "data", spark_master="local[2]"))
    app.extensions["mmax_jobs"].assets_dir = tmp_path / "not-shared"  # the executors cannot find the model
    job, _ = spark_job(app.test_client(), slide)
    assert job["status"] == "failed"
    assert "the Spark engine failed on local[2]: a task raised AssetError" in job["message"]
    assert str(tmp_path) not in job["message"]


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or newer)")
def test_a_cluster_that_is_down_fails_the_job_saying_so(tmp_path):
    """Spark gives up on an unreachable master after its three registration attempts (about a minute)."""
    slide = tmp_path / "section.tif"
    pyramid_tiff(slide, section((512, 384)), mpp=0.5, levels=1)
    client = make_app(config_with(models=("metastasis",), data_dir=tmp_path / "data",
                                  spark_master="spark://127.0.0.1:9")).test_client()
    job, _ = spark_job(client, slide)
    assert job["status"] == "failed" and "could not start with master spark://127.0.0.1:9" in job["message"]


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or newer)")
def test_a_spark_job_cancelled_while_its_tasks_run_stops_them(tmp_path):
    slide = tmp_path / "section.tif"
    pyramid_tiff(slide, section((1024, 768), dark_square=(400, 300, 200)), mpp=0.5, levels=2)
    client = make_app(config_with(models=("metastasis",), data_dir=tmp_path / "data", spark_master="local[2]")
                      ).test_client()
    response = client.post("/model/metastasis/jobs", data={"slide": (io.BytesIO(slide.read_bytes()), slide.name)},
                           content_type="multipart/form-data")
    job_id, deadline = response.get_json()["id"], time.monotonic() + 120
    while not client.get(f"/jobs/{job_id}").get_json()["message"].startswith("Spark: "):
        assert time.monotonic() < deadline, "the Spark tasks never started"
        time.sleep(0.05)
    assert client.delete(f"/jobs/{job_id}").get_json()["status"] == "cancelled"
    runner = client.application.extensions["mmax_jobs"]
    while runner.running == job_id:  # the runner stops the tasks and is free for the next job
        assert time.monotonic() < deadline, "the cancelled Spark job kept its runner"
        time.sleep(0.1)
    job = client.get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled" and client.get(f"/jobs/{job_id}/result").status_code == 409
