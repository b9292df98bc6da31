"""RunStore: configs, records and artifacts of every run, in one SQLite file.

Each write is one short ``BEGIN IMMEDIATE ... COMMIT`` transaction, so two
processes (or threads) writing at once queue on SQLite's lock and lose nothing,
and a process killed mid-run keeps every write that returned.  sqlite3
connections must not be shared between threads, nor carried across a fork, so
the store opens one connection per (process, thread) on first use.
"""
from __future__ import annotations

import operator
import os
import secrets
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from lipschitz_lab.runs import codec
from lipschitz_lab.runs.frames import records_frame
from lipschitz_lab.runs.schema import connect, migrate, retry_locked

#: where runs go unless told otherwise (relative to the working directory).
DEFAULT_DB = Path("runs") / "lipschitz_lab.db"
#: environment variable naming the run store; it wins over DEFAULT_DB, an explicit path wins over it
STORE_ENV = "LIPSCHITZ_LAB_STORE"

#: a run's life: "running" until the trainer says how it ended.
STATUSES = ("running", "finished", "stopped", "diverged", "failed")

T = TypeVar("T")

# Connections inherited across a fork: never used again, and never closed in the
# child either (closing would touch the parent's file locks and WAL index).
_ABANDONED: list[sqlite3.Connection] = []


class _Handle:
    """One thread's connection; closed when the thread (or the store) goes away."""

    __slots__ = ("conn", "pid")

    def __init__(self, conn: sqlite3.Connection):
        self.conn, self.pid = conn, os.getpid()

    def close(self, _getpid=os.getpid) -> None:  # bound early: __del__ may run at shutdown
        if self.pid == _getpid():
            self.conn.close()
        else:
            _ABANDONED.append(self.conn)

    __del__ = close


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return status


def _int_or_none(record: dict, field: str) -> int | None:
    value = record.get(field)
    if value is None:
        return None
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"record field {field!r} must be an int or None, got {value!r}") from None


def store_path(path: str | os.PathLike | None = None) -> Path:
    """The one rule for finding the store: ``path`` when given and not empty; else
    ``$LIPSCHITZ_LAB_STORE`` when set and not empty; else :data:`DEFAULT_DB`."""
    if path is not None and str(path) != "":
        return Path(path)
    return Path(os.environ.get(STORE_ENV) or DEFAULT_DB)


def open_store(store: "RunStore | str | os.PathLike | None" = None) -> "RunStore":
    """``store`` itself when it is a :class:`RunStore`, else the store at :func:`store_path`."""
    return store if isinstance(store, RunStore) else RunStore(store_path(store))


class RunStore:
    """One SQLite file of runs.  ``path`` may be a ``str`` or a ``Path``.

    Picklable (only the path travels), so a spawned worker can be handed the store.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_DB):
        if str(path) == ":memory:":
            raise ValueError("path ':memory:' is not supported: each thread would see its own database")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        migrate(self._conn(), self.path)

    # -- connections and transactions -------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        handle = getattr(self._local, "handle", None)
        if handle is None or handle.pid != os.getpid():
            handle = self._local.handle = _Handle(connect(self.path))
        return handle.conn

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction, retried while the file stays locked."""
        conn = self._conn()

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return retry_locked(attempt)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        conn = self._conn()
        return retry_locked(lambda: conn.execute(sql, tuple(params)).fetchall())

    def _require(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise ValueError(f"unknown run id {run_id!r}")

    def close(self) -> None:
        """Close this thread's connection now (the others close when their thread ends)."""
        handle = self._local.__dict__.pop("handle", None)  # other threads' handles stay
        if handle is not None:
            handle.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    # -- runs -------------------------------------------------------------------------
    def create_run(self, config: dict, *, name: str | None = None, study: str | None = None,
                   key: str | None = None) -> str:
        """Register a new run with status "running"; returns its id, e.g. ``r-20261128-103001-ab12``."""
        config_json = codec.encode_config(config)

        def insert(conn: sqlite3.Connection) -> str:
            if key is not None:
                row = conn.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    raise ValueError(f"key {key!r} already names run {row[0]!r}")
            now = _now()
            stamp = now.isoformat(timespec="seconds")
            while True:  # 4 hex digits: a clash within one second is rare, so just draw again
                run_id = f"r-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
                if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                    break
            conn.execute(
                "INSERT INTO runs (id, name, study, key, config, status, reason, created, updated)"
                " VALUES (?, ?, ?, ?, ?, 'running', NULL, ?, ?)",
                (run_id, name, study, key, config_json, stamp, stamp))
            return run_id

        return self._write(insert)

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Record how a run stands; ``reason`` says why (e.g. where it diverged)."""
        _check_status(status)

        def update(conn: sqlite3.Connection) -> None:
            self._require(conn, run_id)
            conn.execute("UPDATE runs SET status = ?, reason = ?, updated = ? WHERE id = ?",
                         (status, reason, _now().isoformat(timespec="seconds"), run_id))

        self._write(update)

    def get_run(self, run_id: str) -> dict:
        rows = self._read(_RUN_SELECT + " WHERE id = ?", (run_id,))
        if not rows:
            raise ValueError(f"unknown run id {run_id!r}")
        return self._run_dicts(rows)[0]

    def list_runs(self, study: str | None = None, status: str | None = None) -> list[dict]:
        """Runs in the order they were created, optionally of one study and/or status."""
        where, params = [], []
        if study is not None:
            where.append("study = ?")
            params.append(study)
        if status is not None:
            where.append("status = ?")
            params.append(_check_status(status))
        sql = _RUN_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created, rowid"
        return self._run_dicts(self._read(sql, params))

    def find_run(self, key: str) -> dict | None:
        """The run registered under ``key``, or None."""
        rows = self._read(_RUN_SELECT + " WHERE key = ?", (key,))
        return self._run_dicts(rows)[0] if rows else None

    def delete_run(self, run_id: str) -> None:
        """Remove a run with its records and artifact entries (the artifact files stay)."""
        def delete(conn: sqlite3.Connection) -> None:
            self._require(conn, run_id)
            for table, column in (("records", "run_id"), ("artifacts", "run_id"), ("runs", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (run_id,))

        self._write(delete)

    def _run_dicts(self, rows: list[tuple]) -> list[dict]:
        ids = [row[0] for row in rows]
        artifacts: dict[str, dict[str, str]] = {run_id: {} for run_id in ids}
        if ids:
            marks = ",".join("?" * len(ids))
            for run_id, kind, path in self._read(
                    f"SELECT run_id, kind, path FROM artifacts WHERE run_id IN ({marks}) ORDER BY rowid", ids):
                artifacts[run_id][kind] = path
        fields = ("id", "name", "study", "key", "config", "status", "reason", "created", "updated")
        runs = []
        for row in rows:
            run = dict(zip(fields, row))
            run["config"] = codec.loads(run["config"])
            run["artifacts"] = artifacts[run["id"]]
            runs.append(run)
        return runs

    # -- artifacts --------------------------------------------------------------------
    def add_artifact(self, run_id: str, kind: str, path: str | os.PathLike) -> None:
        """Point ``kind`` (e.g. "checkpoint") of a run at ``path``; a second call replaces it."""
        def upsert(conn: sqlite3.Connection) -> None:
            self._require(conn, run_id)
            conn.execute("INSERT OR REPLACE INTO artifacts (run_id, kind, path) VALUES (?, ?, ?)",
                         (run_id, kind, os.fspath(path)))

        self._write(upsert)

    def artifacts(self, run_id: str) -> dict[str, str]:
        return self.get_run(run_id)["artifacts"]

    # -- records ----------------------------------------------------------------------
    def append_records(self, run_id: str, records: list[dict]) -> None:
        """Append step and epoch records in one transaction: all of them land, or none."""
        rows = []
        for record in records:
            if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
                raise ValueError(f"record must be a dict with a str 'kind', got {record!r}")
            rows.append((record["kind"], _int_or_none(record, "step"), _int_or_none(record, "epoch"),
                         codec.encode_record(record)))

        def insert(conn: sqlite3.Connection) -> None:
            self._require(conn, run_id)
            (seq,) = conn.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM records WHERE run_id = ?",
                                  (run_id,)).fetchone()
            conn.executemany(
                "INSERT INTO records (run_id, seq, kind, step, epoch, data) VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, seq + i, *row) for i, row in enumerate(rows)])
            conn.execute("UPDATE runs SET updated = ? WHERE id = ?",
                         (_now().isoformat(timespec="seconds"), run_id))

        self._write(insert)

    def records(self, run_id: str, kind: str | None = None) -> list[dict]:
        """The run's records in the order they were appended, optionally of one kind."""
        self.get_run(run_id)
        sql, params = "SELECT data FROM records WHERE run_id = ?", [run_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [codec.loads(data) for (data,) in self._read(sql + " ORDER BY seq", params)]

    def truncate(self, run_id: str, *, after_step: int | None = None, after_epoch: int | None = None) -> int:
        """Drop the records past a checkpoint, before a resumed run appends again.

        A record goes if its step is past ``after_step`` or its epoch past
        ``after_epoch``.  Later appends continue the ``seq`` numbering from the
        records kept, so a resumed run's records equal an uninterrupted run's.
        Returns how many records were dropped.
        """
        if after_step is None and after_epoch is None:
            raise ValueError("truncate needs after_step or after_epoch, got neither")
        limit_step = -1 if after_step is None else operator.index(after_step)
        limit_epoch = -1 if after_epoch is None else operator.index(after_epoch)

        def delete(conn: sqlite3.Connection) -> int:
            self._require(conn, run_id)
            cur = conn.execute(
                "DELETE FROM records WHERE run_id = ? AND ((? AND step > ?) OR (? AND epoch > ?))",
                (run_id, after_step is not None, limit_step, after_epoch is not None, limit_epoch))
            return cur.rowcount

        return self._write(delete)

    def last_epoch(self, run_id: str) -> int | None:
        """The highest epoch that has an epoch record, or None before the first."""
        self.get_run(run_id)
        return self._read("SELECT MAX(epoch) FROM records WHERE run_id = ? AND kind = 'epoch'", (run_id,))[0][0]

    # -- export -----------------------------------------------------------------------
    def to_pandas(self, run_id: str, kind: str | None = "step"):
        """One row per record; nested dicts become columns such as ``grad_layers.fc``."""
        return records_frame(self.records(run_id, kind=kind))

    def export_csv(self, run_id: str, path: str | os.PathLike, kind: str | None = "step") -> Path:
        """The run's records as CSV (floats written to round-trip).  pandas 3 reads them back
        exactly; with pandas 2 pass ``float_precision="round_trip"`` to ``pd.read_csv`` (its
        default parser may miss the last digit)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_pandas(run_id, kind=kind).to_csv(path, index=False)
        return path


_RUN_SELECT = "SELECT id, name, study, key, config, status, reason, created, updated FROM runs"
