"""The SQLite schema of the run store, its version, and how a connection is opened.

One file holds every run.  Concurrency comes from SQLite itself:

* WAL journal mode, so readers never block the writer and a killed writer
  leaves the last committed transaction intact;
* ``synchronous=NORMAL``: in WAL mode a commit survives a crash of the
  process (SIGKILL included); only a power cut may lose the last few;
* a long busy timeout, so a second writer waits for the lock instead of
  failing at once.

The schema version lives in ``PRAGMA user_version``; ``MIGRATIONS[v]`` moves a
database from version ``v - 1`` to ``v``.  Version 2 adds ``leases`` (who trains a
run of a study now, see :mod:`~lipschitz_lab.runs.leases`) and ``events`` (a run's
history: every status it took, every claim and takeover); a version-1 file gains the
two tables when it is opened, and keeps everything it held.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

#: the version this code writes; a newer file is refused rather than misread.
SCHEMA_VERSION = 2

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

# leases are keyed by the run's key, not its id: a launcher claims a run before the run exists
_V2 = """
CREATE TABLE leases (
    key       TEXT PRIMARY KEY,   -- the run's key (a study run's stable name)
    owner     TEXT NOT NULL,      -- the launcher training it: host:pid:token
    heartbeat REAL NOT NULL,      -- unix time of the owner's last beat
    ttl       REAL NOT NULL,      -- the owner beats again within ttl seconds, or loses the run
    claimed   REAL NOT NULL
);

CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     REAL NOT NULL,         -- unix time
    run_id TEXT,
    key    TEXT,
    event  TEXT NOT NULL,         -- status, claim, takeover, release, lost, worker, retry
    detail TEXT,                  -- the status, the previous owner, the worker's host and pid
    owner  TEXT
);
CREATE INDEX events_run ON events (run_id, event);
CREATE INDEX events_key ON events (key, event);
"""

MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2}

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


def log_event(conn: sqlite3.Connection, event: str, *, run_id: str | None = None, key: str | None = None,
              detail: str | None = None, owner: str | None = None) -> None:
    """One row of history, inside the caller's transaction (so it lands with the change it names)."""
    conn.execute("INSERT INTO events (at, run_id, key, event, detail, owner) VALUES (?, ?, ?, ?, ?, ?)",
                 (time.time(), run_id, key, event, detail, owner))


class Handle:
    """One thread's connection; closed when the thread (or the store) goes away."""

    __slots__ = ("conn", "pid")

    def __init__(self, conn: sqlite3.Connection):
        self.conn, self.pid = conn, os.getpid()

    def close(self, _getpid=os.getpid) -> None:  # bound early: __del__ may run at shutdown
        if self.pid == _getpid():
            self.conn.close()
        else:
            ABANDONED.append(self.conn)

    __del__ = close


# Connections inherited across a fork: never used again, and never closed in the
# child either (closing would touch the parent's file locks and WAL index).
ABANDONED: list[sqlite3.Connection] = []


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
