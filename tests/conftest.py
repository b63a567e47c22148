from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from app import create_app  # noqa: E402
from config import ROOT, Config  # noqa: E402

SHARED = ROOT.parent / "shared"
LEUKOCYTE_DATA = SHARED / "data" / "leukocyte" / "train"
MOBILENET_H5 = SHARED / "weights" / "mobilenet_v1_0.25_224" / "mobilenet_v1_0.25_224.h5"

PCAM = SHARED / "data" / "metastasis" / "pcam"
SVS = SHARED / "data" / "metastasis" / "wsi" / "CMU-1-Small-Region.svs"

# Small limits so the limit tests need only small uploads; jobs in a scratch folder, not the checkout's var/.
TEST_CONFIG = Config(max_upload_bytes=2_000_000, max_image_pixels=4_000_000,
                     data_dir=Path(tempfile.mkdtemp(prefix="mmax-tests-")))


def config_with(**changes) -> Config:
    """The test settings with some changed, e.g. ``config_with(assets_dir=tmp)``; a job folder of its own
    unless one is given, so its job runner never takes the session app's jobs."""
    changes.setdefault("data_dir", Path(tempfile.mkdtemp(prefix="mmax-tests-")))
    return replace(TEST_CONFIG, **changes)


def make_app(config: Config = TEST_CONFIG):
    app = create_app(config)
    assert app.extensions["mmax_registry"].wait_until_loaded(timeout=300), "models did not load"
    return app


@pytest.fixture(scope="session")
def app():
    return make_app()


@pytest.fixture()
def client(app):
    return app.test_client()


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (shared data not beside the checkout)")


@pytest.fixture(scope="module")
def live_server(app):
    """The test app behind a real HTTP server (for clients that need a URL: a browser, tritonclient)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
