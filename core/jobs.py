"""Durable whole-slide jobs: a queue in a database (core.job_db: SQLite under the data dir, or a PostgreSQL server
that replicas share), job folders under the data dir, and a runner thread in every server process.

A job is a row (queued → running → done | failed) plus a folder with its slide (when uploaded) and its
outputs. Runners claim queued jobs atomically, so any number of server processes share one queue. A
running job's runner beats a heartbeat; a job whose heartbeat stops (its process died) is re-queued, or
failed with the reason once it has used up its attempts; a re-queued job resumes from the blocks its last
attempt finished. Nothing is kept only in memory.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from core.errors import ClientError
from core.job_db import JobStoreUnavailable, open_job_database
from core.wsi.spark import SparkEngineFailed

log = logging.getLogger(__name__)

JOB_ID_LENGTH = 32  # uuid4 hex
MAX_SLIDE_PATH = 1024  # characters of a slide path under the slide root
UPDATABLE = {"status", "progress", "message"}
RESULT_FILES = {"result": "result.json", "heatmap": "heatmap.png", "geojson": "regions.geojson"}
#: a running job's finished blocks (core.wsi.checkpoint): its next attempt resumes from them
CHECKPOINT_FILE = "blocks.jsonl"
class JobNotFound(ClientError):
    status = 404


class JobNotDone(ClientError):
    status = 409


class QueueFull(ClientError):
    """Too many jobs waiting: come back later (the API answers 503 with ``Retry-After``)."""

    status = 503
    retry_after_s = 60


class TooManyJobs(ClientError):
    """One client has its share of unfinished jobs: it gets 429 until one of them ends."""

    status = 429
    retry_after_s = 60


class JobCancelled(Exception):
    """Raised inside a running job, between blocks, once a client has cancelled it."""


def check_job_id(job_id: str) -> str:
    if len(job_id) != JOB_ID_LENGTH or any(ch not in "0123456789abcdef" for ch in job_id):
        raise ClientError(f"malformed job id '{job_id[:80]}': job ids are {JOB_ID_LENGTH} hexadecimal characters")
    return job_id


class SlideUpload(Protocol):
    """An uploaded slide file (werkzeug's FileStorage is one)."""

    filename: str | None

    def save(self, dst: Path) -> None: ...


def resolve_slide_path(root: Path | None, relative: str) -> Path:
    """``relative`` inside the slide root, refusing anything that leaves it (``..``, absolute, symlinks)."""
    if root is None:
        raise ClientError("this server has no slide root (setting MMAX_SLIDE_ROOT); upload the slide in the "
                          "multipart file field 'slide' instead")
    if "\x00" in relative or len(relative) > MAX_SLIDE_PATH:
        raise ClientError(f"slide path '{relative[:80]}' is not a path: at most {MAX_SLIDE_PATH} characters, no NUL")
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base):
        raise ClientError(f"slide path '{relative}' leaves the slide root", status=403)
    if not candidate.is_file():
        raise ClientError(f"no slide '{relative}' under the slide root", status=404)
    return candidate


class JobStore:
    """The jobs table and each job's folder under ``data_dir``."""

    def __init__(self, data_dir: Path, max_queued: int = 20, max_per_client: int = 5, database: str = ""):
        """``database``: where the queue lives (setting MMAX_JOB_STORE; empty: ``data_dir/jobs.sqlite``); job
        folders are always under ``data_dir``, which replicas sharing a PostgreSQL queue share as a volume."""
        self.data_dir, self.max_queued, self.max_per_client = Path(data_dir), max_queued, max_per_client
        try:
            (self.data_dir / "jobs").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"the data dir {self.data_dir} (setting MMAX_DATA_DIR) is not usable for job "
                             f"folders: {exc}") from None
        self.database_url, self.db = database, open_job_database(database, self.data_dir)

    def folder(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / check_job_id(job_id)

    def submit(self, model, options: dict[str, Any], upload: SlideUpload | None = None,
               slide_path: str | None = None, slide_root: Path | None = None, sample_id: str | None = None,
               client: str | None = None) -> dict:
        """Queue a slide for ``model`` (a SlideModel): an upload is kept in the job's folder, a path must lie
        under ``slide_root``; the slide is opened and checked now, so a bad one is refused, not failed later.
        ``client`` (who submits: api/jobs.py gives the address) may have ``max_per_client`` unfinished jobs."""
        from werkzeug.utils import secure_filename

        from core.wsi.slide import open_slide

        with self.db.connect() as db:
            queued = db.execute("SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'").fetchone()["n"]
            own = db.execute("SELECT COUNT(*) AS n FROM jobs WHERE client = ? AND status IN ('queued', 'running')",
                             (client,)).fetchone()["n"] if client else 0
        if own >= self.max_per_client:
            raise TooManyJobs(f"you have {own} jobs queued or running (the limit per client is "
                              f"{self.max_per_client}, setting MMAX_MAX_JOBS_PER_CLIENT); submit again when one "
                              f"has ended")
        if queued >= self.max_queued:
            raise QueueFull(f"{queued} jobs are waiting (the limit is {self.max_queued}); submit again later")
        job_id = self.new_id()
        folder = self.folder(job_id)
        if upload is not None:
            name = secure_filename(upload.filename or "") or "slide"
            folder.mkdir(parents=True)
            path = folder / name
            upload.save(path)
        elif slide_path:
            name, path = slide_path, resolve_slide_path(slide_root, slide_path)
        else:
            raise ClientError("send the slide as the multipart file field 'slide', or its path relative to the "
                              "slide root in the form field 'slide_path'")
        try:
            if path.stat().st_size == 0:
                raise ClientError("the 'slide' upload is empty (0 bytes)")
            model.check_slide(open_slide(path), options)
        except Exception:  # refused or unreadable: nothing of it stays on disk
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self.create(job_id, model.spec.id, path, name, options, sample_id, client)

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def create(self, job_id: str, model_id: str, slide: Path, slide_name: str, options: dict[str, Any],
               sample_id: str | None = None, client: str | None = None) -> dict:
        now = time.time()
        with self.db.connect() as db:
            db.execute("INSERT INTO jobs (id, model, slide, slide_name, options, status, message, created, updated, "
                       "sample_id, client) VALUES (?, ?, ?, ?, ?, 'queued', 'waiting for a runner', ?, ?, ?, ?)",
                       (job_id, model_id, str(slide), slide_name, json.dumps(options), now, now, sample_id, client))
        return self.get(job_id)

    def get(self, job_id: str) -> dict:
        with self.db.connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (check_job_id(job_id),)).fetchone()
        if row is None:
            raise JobNotFound(f"no job '{job_id}'")
        return row

    def cancel(self, job_id: str) -> dict:
        """A queued or running job, now ``cancelled`` (a running one stops at its next block); a job that has
        ended is answered as it is."""
        with self.db.connect() as db:
            db.execute("UPDATE jobs SET status = 'cancelled', message = 'cancelled by request', updated = ? "
                       "WHERE id = ? AND status IN ('queued', 'running')", (time.time(), check_job_id(job_id)))
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Forget a job that has ended and remove its folder (its uploaded slide and outputs)."""
        if self.get(job_id)["status"] in {"queued", "running"}:
            raise JobNotDone(f"job '{job_id}' is still {self.get(job_id)['status']}; cancel it first")
        with self.db.connect() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def recent(self, limit: int = 100) -> list[dict]:
        with self.db.connect() as db:
            return db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()

    def claim(self, worker: str, models: Iterable[str] | None = None) -> dict | None:
        """The oldest queued job, now running for ``worker``; None when the queue is empty. With ``models``,
        only a job for one of them: a process that serves some models leaves the others' jobs to the
        processes sharing the queue that serve them."""
        wanted = None if models is None else sorted(models)
        if wanted == []:
            return None
        only = "" if wanted is None else f" AND model IN ({', '.join('?' * len(wanted))})"
        with self.db.transaction() as db:
            # B608 reviewed: the query text holds only placeholders and fixed words; values are bound parameters.
            query = (f"SELECT id FROM jobs WHERE status = 'queued'{only} "  # nosec B608
                     f"ORDER BY created LIMIT 1{self.db.skip_locked}")
            row = db.execute(query, wanted or ()).fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute("UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?, heartbeat = ?, "
                       "updated = ?, progress = 0, message = 'started' WHERE id = ?", (worker, now, now, row["id"]))
        return self.get(row["id"])

    def update(self, job_id: str, **fields: Any) -> None:
        """Change a job; without a ``status``, only while it runs (progress and heartbeats must not touch a
        job that was cancelled meanwhile)."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"not job columns that can change: {', '.join(sorted(unknown))}")
        only_running = "status" not in fields
        fields["updated"] = time.time()
        if fields.get("status", "running") == "running":
            fields["heartbeat"] = fields["updated"]
        names = ", ".join(f"{name} = ?" for name in fields)
        condition = " AND status = 'running'" if only_running else ""
        with self.db.connect() as db:
            # B608 reviewed: column names are checked against UPDATABLE (never a client's text); values are
            # bound parameters.
            db.execute(f"UPDATE jobs SET {names} WHERE id = ?{condition}", (*fields.values(), job_id))  # nosec B608

    def finish(self, job_id: str, status: str, message: str, progress: float | None = None) -> None:
        """A running job's end (``done`` or ``failed``); a job cancelled meanwhile stays cancelled."""
        extra = {"progress": progress} if progress is not None else {}
        fields = {"status": status, "message": message, **extra, "updated": time.time()}
        names = ", ".join(f"{name} = ?" for name in fields)
        with self.db.connect() as db:
            # B608 reviewed: fixed column names; values are bound parameters.
            db.execute(f"UPDATE jobs SET {names} WHERE id = ? AND status = 'running'",  # nosec B608
                       (*fields.values(), job_id))

    def recover(self, stale_s: float, max_attempts: int) -> int:
        """Jobs whose runner stopped beating: back to the queue, or failed once out of attempts."""
        cutoff, now = time.time() - stale_s, time.time()
        with self.db.transaction() as db:
            # B608 reviewed: a fixed query and the store's fixed locking clause; the cutoff is a bound parameter.
            query = "SELECT id, attempts, worker FROM jobs WHERE status = 'running' AND heartbeat < ?"
            stale = db.execute(query + self.db.skip_locked, (cutoff,)).fetchall()  # nosec B608
            for row in stale:
                if row["attempts"] < max_attempts:
                    db.execute("UPDATE jobs SET status = 'queued', updated = ?, message = ? WHERE id = ?",
                               (now, f"re-queued: its runner stopped responding (attempt {row['attempts']})",
                                row["id"]))
                else:
                    db.execute("UPDATE jobs SET status = 'failed', updated = ?, message = ? WHERE id = ?",
                               (now, f"failed: its runner stopped responding on each of {row['attempts']} "
                                     f"attempts (the slide may need more memory or time than a worker has)",
                                row["id"]))
        for row in stale:
            log.warning("job %s: runner %s stopped responding", row["id"], row["worker"])
        return len(stale)


class JobRunner:
    """One thread per server process: recover stale jobs, claim one, run it, repeat."""

    def __init__(self, store: JobStore, registry, stale_s: float, max_attempts: int, poll_s: float = 1.0,
                 spark_master: str = "", assets_dir: Path | None = None):
        """With ``spark_master`` (setting MMAX_SPARK_MASTER), slides are analysed by Spark's executors, which
        load the models from ``assets_dir``; otherwise in this process."""
        self.store, self.registry = store, registry
        self.spark_master, self.assets_dir = spark_master, assets_dir
        self.running: str | None = None  # the id of the job this runner is working on
        self.stale_s, self.max_attempts, self.poll_s = stale_s, max_attempts, poll_s
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        while True:
            try:
                self.store.recover(self.stale_s, self.max_attempts)
                job = self.store.claim(self.worker, self.registry.ready_ids) if self.registry.settled else None
            except JobStoreUnavailable:  # logged where it happened; the runner tries again at its next poll
                job = None
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            self.run(job)

    def run(self, job: dict) -> None:
        job_id, beating = job["id"], threading.Event()
        self.running = job_id

        def heartbeat() -> None:  # independent of progress: a slow block is not a dead runner
            while not beating.wait(max(0.5, self.stale_s / 4)):
                self.store.update(job_id)

        beat = threading.Thread(target=heartbeat, name=f"heartbeat-{job_id[:8]}", daemon=True)
        beat.start()
        try:
            self._analyse(job)
            self.store.finish(job_id, "done", "done", progress=1.0)
            log.info("job %s done", job_id)
        except JobCancelled:
            log.info("job %s cancelled", job_id)
        except ClientError as exc:
            self.store.finish(job_id, "failed", exc.message)
        except SparkEngineFailed as exc:
            self.store.finish(job_id, "failed", f"failed: {exc}")
        except Exception as exc:  # a bug or a broken slide: the job says so, the runner goes on
            log.exception("job %s failed", job_id)
            self.store.finish(job_id, "failed", f"failed: an error inside the service ({type(exc).__name__}); the "
                                                f"server log has the details")
        finally:
            beating.set()
            self.running = None
            # The job has ended (a killed process never gets here: its next attempt resumes from the blocks)
            folder = self.store.folder(job_id)
            (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def _analyse(self, job: dict) -> None:
        from core.wsi.engine import analyse_local
        from core.wsi.slide import open_slide
        from core.wsi.spark import analyse_spark

        model = self.registry.get_ready(job["model"])

        def progress(fraction: float, note: str) -> None:  # called between blocks
            if self.store.get(job["id"])["status"] == "cancelled":
                raise JobCancelled(job["id"])
            self.store.update(job["id"], progress=round(fraction, 4), message=note)

        options = json.loads(job["options"])
        if self.spark_master:
            analysis = analyse_spark(model, Path(job["slide"]), self.assets_dir, options, self.spark_master,
                                     progress=progress)
        else:
            analysis = analyse_local(model, open_slide(Path(job["slide"])), options, progress,
                                     self.store.folder(job["id"]) / CHECKPOINT_FILE)
        analysis.result.update({"job_id": job["id"], "model": job["model"], "version": model.spec.version,
                                "engine": "spark" if self.spark_master else "local",
                                "weights_sha256": model.spec.meta["weights"].get("sha256"),
                                **({"sample_id": job["sample_id"]} if job["sample_id"] else {})})
        folder = self.store.folder(job["id"])
        folder.mkdir(parents=True, exist_ok=True)
        # Written under temporary names and renamed: a reader never sees half a file.
        for key, write in (("heatmap", lambda p: analysis.heatmap.save(p, format="PNG")),
                           ("geojson", lambda p: p.write_text(json.dumps(analysis.geojson))),
                           ("result", lambda p: p.write_text(json.dumps(analysis.result)))):
            partial = folder / (RESULT_FILES[key] + ".partial")
            write(partial)
            partial.replace(folder / RESULT_FILES[key])
