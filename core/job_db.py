"""The job queue's database: embedded SQLite (the default) or a PostgreSQL server that replicas share.

``core.jobs.JobStore`` writes its SQL once, with ``?`` placeholders, and runs it through one of these. They
differ where the engines do: how a connection is made, how a transaction takes its lock, column types, and
which errors mean "the database is unreachable" (answered as a 503, never a 500).
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Protocol

from core.errors import ClientError

log = logging.getLogger(__name__)

#: the jobs table, column by column (SQLite's REAL is 8 bytes; PostgreSQL's would be 4: see _SQL_TYPES)
COLUMNS = {
    "id": "TEXT PRIMARY KEY", "model": "TEXT NOT NULL", "slide": "TEXT NOT NULL", "slide_name": "TEXT NOT NULL",
    "options": "TEXT NOT NULL", "status": "TEXT NOT NULL", "progress": "REAL NOT NULL DEFAULT 0",
    "message": "TEXT", "attempts": "INTEGER NOT NULL DEFAULT 0", "worker": "TEXT", "created": "REAL NOT NULL",
    "updated": "REAL NOT NULL", "heartbeat": "REAL", "sample_id": "TEXT", "client": "TEXT",
}
#: columns added since the first release: an older SQLite job database gains them when it is opened
ADDED_COLUMNS = ("sample_id", "client")


class JobStoreUnavailable(ClientError):
    """The job database cannot be reached (a PostgreSQL server down, a locked or unreadable file)."""

    status = 503
    retry_after_s = 30


class Connection(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any: ...


class JobDatabase(Protocol):
    #: appended to a SELECT inside a transaction: rows other replicas have locked are skipped, not waited for
    skip_locked: str

    def describe(self) -> str: ...

    def setup(self) -> None: ...

    def connect(self) -> Any: ...

    def transaction(self) -> Any: ...


class SQLiteJobDatabase:
    """One file under the data dir; any number of processes on one host share it (one writer at a time)."""

    skip_locked = ""  # BEGIN IMMEDIATE already makes every claim wait for the one before it

    def __init__(self, path: Path):
        self.path = path

    def describe(self) -> str:
        return f"the SQLite file {self.path}"

    def setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(create_table_sql({}))
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)").fetchall()}
            for column in ADDED_COLUMNS:
                if column not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {COLUMNS[column]}")  # nosec B608 - fixed

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
                db.row_factory = _sqlite_dict
                yield db
        except sqlite3.OperationalError as exc:
            raise _unavailable(self, exc) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time: no job is claimed twice
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


class PostgresJobDatabase:
    """A PostgreSQL database shared by every replica: claims lock the job's row and skip rows others hold."""

    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str):
        self.url = url

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(self.url)  # named without its password
        return f"the PostgreSQL database {parts.get('dbname', '')} at {parts.get('host', 'localhost')}"

    def setup(self) -> None:
        with self.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(4242)")  # replicas starting together create it once
            db.execute(create_table_sql({"REAL": "DOUBLE PRECISION"}))

    @contextmanager
    def connect(self) -> Iterator[Any]:
        import psycopg
        from psycopg.rows import dict_row

        try:
            connection = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise _unavailable(self, exc) from None
        with connection:
            try:
                yield _PostgresConnection(connection)
            except psycopg.OperationalError as exc:
                raise _unavailable(self, exc) from None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.connect() as db:
            with db.connection.transaction():
                yield db


class _PostgresConnection:
    """psycopg's connection, taking the ``?`` placeholders the store's SQL is written with."""

    def __init__(self, connection: Any):
        self.connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self.connection.execute(sql.replace("?", "%s"), parameters)


def create_table_sql(types: dict[str, str]) -> str:
    columns = []
    for name, declaration in COLUMNS.items():
        kind, _, rest = declaration.partition(" ")
        columns.append(" ".join(filter(None, [name, types.get(kind, kind), rest])))
    return f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(columns)})"


def open_job_database(url: str, data_dir: Path) -> JobDatabase:
    """``url``: empty (``data_dir/jobs.sqlite``), ``sqlite:///path`` or ``postgresql://user:pass@host:port/db``
    (setting MMAX_JOB_STORE). The database is reached and its table made now: a bad setting stops start-up."""
    if not url:
        database: JobDatabase = SQLiteJobDatabase(Path(data_dir) / "jobs.sqlite")
    elif url.startswith("sqlite:///"):
        database = SQLiteJobDatabase(Path(url.removeprefix("sqlite:///")))
    elif url.startswith(("postgresql://", "postgres://")):
        database = PostgresJobDatabase(url)
    else:
        raise SystemExit("setting MMAX_JOB_STORE must be empty, sqlite:///path or postgresql://user:pass@host/db")
    try:
        database.setup()
    except (OSError, sqlite3.Error, JobStoreUnavailable) as exc:
        raise SystemExit(f"{database.describe()} (setting MMAX_JOB_STORE, or MMAX_DATA_DIR for the default) is "
                         f"not usable for the job queue: {getattr(exc, 'message', exc)}") from None
    return database


def _sqlite_dict(cursor: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
    return {column[0]: value for column, value in zip(cursor.description, row)}


_last_logged: dict[str, float] = {}


def _unavailable(database: JobDatabase, exc: Exception) -> JobStoreUnavailable:
    # The cause goes to the log, not the answer; once a minute per database (runners poll every second).
    name = database.describe()
    if time.monotonic() - _last_logged.get(name, -60.0) >= 60:
        _last_logged[name] = time.monotonic()
        log.error("job database %s: %s", name, exc)
    return JobStoreUnavailable("the job queue is unavailable just now (its database cannot be reached); "
                               "try again later")
