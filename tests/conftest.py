from __future__ import annotations

import atexit
import os
import shutil
import signal
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

# Every test app's jobs live under one scratch folder, removed when the test run ends.
SCRATCH = Path(tempfile.mkdtemp(prefix="mmax-tests-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(dir=SCRATCH))


# Small limits so the limit tests need only small uploads; jobs in a scratch folder, not the checkout's var/.
TEST_CONFIG = Config(max_upload_bytes=2_000_000, max_image_pixels=4_000_000, data_dir=scratch_dir())


def config_with(**changes) -> Config:
    """The test settings with some changed, e.g. ``config_with(assets_dir=tmp)``; a job folder of its own
    unless one is given, so its job runner never takes the session app's jobs."""
    changes.setdefault("data_dir", scratch_dir())
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


class PostgresServer:
    """A throwaway PostgreSQL cluster on a Unix socket (run as the ``postgres`` user when tests run as root,
    since PostgreSQL refuses root); ``new_database()`` gives each store a queue of its own."""

    def __init__(self, bin_dir: Path):
        import pwd
        import shutil
        import subprocess

        self._shutil, self._subprocess = shutil, subprocess
        self.folder = Path(tempfile.mkdtemp(prefix="mmax-pg-"))
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            record = pwd.getpwnam(self.user)
            os.chown(self.folder, record.pw_uid, record.pw_gid)
        run_as = {"user": self.user} if self.user else {}
        subprocess.run([str(bin_dir / "initdb"), "-D", str(self.folder / "data"), "-U", "postgres",
                        "--auth=trust", "--no-sync", "-E", "UTF8"], check=True, capture_output=True, **run_as)
        self.process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(self.folder / "data"), "-k", str(self.folder), "-p", "5432",
             "-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **run_as)
        self.url = f"postgresql://postgres@/postgres?host={self.folder}&port=5432"
        self._count = 0
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 30) -> None:
        import time

        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.2)

    def new_database(self) -> str:
        import psycopg

        self._count += 1
        name = f"queue{self._count}"
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url.replace("/postgres?", f"/{name}?")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # "fast" shutdown: does not wait for clients to leave
        self.process.wait(timeout=30)
        self._shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql_server():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL binaries on this machine (initdb under /usr/lib/postgresql/<version>/bin)")
    server = PostgresServer(found[-1].parent)
    yield server
    server.stop()
