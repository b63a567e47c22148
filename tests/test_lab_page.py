"""The lab page at /ui/: served by the service alone, one analysis per submission, and (where Chromium is
installed) used in a real browser for every model."""
from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import config_with, make_app
from tests.images import encode, hpa_field, section, smear, spread

PAGE_FILES = ("index.html", "lab.js", "lab.css")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_and_its_files_are_served_and_reach_for_nothing_elsewhere(client):
    page = client.get("/ui/")
    assert page.status_code == 200 and b'<select id="model"' in page.data and b'<button type="submit">' in page.data
    assert client.get("/ui").status_code == 308
    for name in PAGE_FILES:
        text = client.get(f"/ui/{name}").get_data(as_text=True)
        assert text and not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
    assert client.get("/ui/nothing.js").status_code == 404


def test_the_page_is_open_while_the_data_needs_the_key():
    client = make_app(config_with(api_key="s3cret")).test_client()
    assert client.get("/ui/").status_code == 200 and client.get("/ui/lab.js").status_code == 200
    assert client.get("/model/metadata").status_code == 401


def test_metadata_tells_the_page_each_models_files_and_whether_it_takes_slides(client):
    models = {m["id"]: m for m in client.get("/model/metadata").get_json()["models"]}
    assert models["protein"]["files"] == ["image", "red", "green", "blue", "yellow"]
    assert models["leukocyte"]["files"] == ["image"]
    assert {m for m, meta in models.items() if meta["whole_slides"]} == {"metastasis", "mitosis"}


def test_json_with_png_is_one_analysis_giving_the_answer_and_its_picture(client):
    def inferences() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        rows = [row for row in text.splitlines() if row.startswith('mmax_inference_seconds_count{model="mitosis"}')]
        return float(rows[0].rsplit(" ", 1)[1]) if rows else 0.0

    before = inferences()
    body = client.post("/model/mitosis/predict", data={"image": (io.BytesIO(encode(Image.fromarray(section((256, 256))))),
                                                                 "f.png"), "format": "json_with_png"},
                       content_type="multipart/form-data").get_json()
    assert inferences() == before + 1
    assert body["overlay_png"].startswith("data:image/png;base64,") and body["geojson"]["type"] == "FeatureCollection"
    picture = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"].split(",", 1)[1])))
    assert picture.width >= 256 and "count" in body


def sample_files(tmp_path: Path) -> dict[str, dict[str, Path]]:
    """Files a technician would pick, per model (made here)."""
    images = {"leukocyte": {"image": smear()}, "chromosome": {"image": spread(rods=((100, 100, 40, 30),))},
              "metastasis": {"image": Image.fromarray(section((96, 96)))},
              "mitosis": {"image": Image.fromarray(section((256, 256)))}, "protein": hpa_field()}
    out = {}
    for model_id, files in images.items():
        out[model_id] = {}
        for name, image in files.items():
            path = tmp_path / f"{model_id}-{name}.png"
            image.save(path)
            out[model_id][name] = path
    return out




@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install -y chromium` (.ci/run does) to run the "
                                             "browser tests")
@pytest.mark.parametrize("model_id", ("leukocyte", "chromosome", "metastasis", "mitosis", "protein"))
def test_in_a_real_browser_each_model_answers_with_a_picture_and_a_table(live_server, tmp_path, model_id):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
    files = sample_files(tmp_path)[model_id]
    requested: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{live_server}/ui/?model={model_id}")
            page.wait_for_selector(f"#model option[value={model_id}]", state="attached")
            assert page.input_value("#model") == model_id
            for name, path in files.items():
                page.set_input_files(f"#files input[name={name}]", str(path))
            page.click("#analyse button[type=submit]")
            page.wait_for_selector("#answer:not([hidden]) #overlay[src^='data:image/png']", timeout=60_000)
            status = page.text_content("#status")
            assert status.startswith("done"), status
            rows = page.locator("#objects tbody tr").count()
            assert rows == int(status.split()[1])  # one row per object found
            assert page.locator("#summary dt").count() >= 2
            # the model's warning is shown exactly when the same upload's answer carries one
            sent = {name: (path.name, path.read_bytes()) for name, path in files.items()}
            domain = requests.post(f"{live_server}/model/{model_id}/predict", files=sent, timeout=60).json()["domain"]
            assert page.is_visible("#domain-warning") == ("warning" in domain)
            if "warning" in domain:
                assert page.text_content("#domain-warning") == domain["warning"]
            page.screenshot(path=str(tmp_path / f"lab-{model_id}.png"), full_page=True)
            page.set_viewport_size({"width": 820, "height": 1180})  # a tablet held upright
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        finally:
            browser.close()
    outside = [url for url in requested if not url.startswith(live_server) and not url.startswith(("data:", "blob:"))]
    assert not outside, outside
