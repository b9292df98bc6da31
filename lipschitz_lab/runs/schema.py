"""The SQLite schema of the run store, its version, and how a connection is opened.

One file holds every run.  Concurrency comes from SQLite itself:

* WAL journal mode, so readers never block the writer and a killed writer
  leaves the last committed transaction intact;
* ``synchronous=NORMAL``: in WAL mode a commit survives a crash of the
  process (SIGKILL included); only a power cut may lose the last few;
* a long busy timeout, so a second writer waits for the lock instead of
  failing at once.

The schema version lives in ``PRAGMA user_version``; ``MIGRATIONS[v]`` moves a
database from version ``v - 1`` to ``v``.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

#: the version this code writes; a newer file is refused rather than misread.
SCHEMA_VERSION = 1

#: seconds a connection waits on another writer's lock before giving up.
BUSY_TIMEOUT_S = 30.0

#: extra attempts after a "database is locked" that outlived the busy timeout.
LOCK_RETRIES = 5

_V1 = """
CREATE TABLE runs (
    id      TEXT PRIMARY KEY,
    name    TEXT,
    study   TEXT,
    key     TEXT UNIQUE,          -- caller-chosen, lets a study skip finished runs
    config  TEXT NOT NULL,        -- JSON, sorted keys
    status  TEXT NOT NULL,
    reason  TEXT,
    created TEXT NOT NULL,        -- ISO 8601, UTC
    updated TEXT NOT NULL
);
CREATE INDEX runs_study ON runs (study);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE records (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,      -- per-run insertion order, 0-based
    kind   TEXT NOT NULL,
    step   INTEGER,
    epoch  INTEGER,
    data   TEXT NOT NULL,         -- the whole record as JSON
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX records_kind ON records (run_id, kind, seq);
CREATE INDEX records_step ON records (run_id, step);
CREATE INDEX records_epoch ON records (run_id, epoch);

CREATE TABLE artifacts (
    run_id TEXT NOT NULL,
    kind   TEXT NOT NULL,         -- e.g. "checkpoint", "report"
    path   TEXT NOT NULL,
    PRIMARY KEY (run_id, kind)
);
"""

MIGRATIONS: dict[int, str] = {1: _V1}

T = TypeVar("T")


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode; transactions are begun explicitly.

    ``check_same_thread=False`` only so that a thread's connection can be closed
    by whichever thread drops it last; each connection is used by one thread.
    """
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def retry_locked(fn: Callable[[], T]) -> T:
    """Call ``fn``, again after a short sleep while the database stays locked."""
    for attempt in range(LOCK_RETRIES + 1):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or attempt == LOCK_RETRIES:
                raise
            time.sleep(0.05 * 2 ** attempt)
    raise AssertionError("unreachable")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file up to :data:`SCHEMA_VERSION` in one transaction."""
    def run() -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"run store {str(path)!r} has schema version {version}, newer than "
                    f"this lipschitz-lab's {SCHEMA_VERSION}; upgrade lipschitz-lab")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    retry_locked(run)
