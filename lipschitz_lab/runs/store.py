"""RunStore: configs, records and artifacts of every run, in one SQLite file.

Each write is one short ``BEGIN IMMEDIATE ... COMMIT`` transaction, so two
processes (or threads) writing at once queue on SQLite's lock and lose nothing,
and a process killed mid-run keeps every write that returned.  sqlite3
connections must not be shared between threads, nor carried across a fork, so
the store opens one connection per (process, thread) on first use.
"""
from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from lipschitz_lab.runs import codec
from lipschitz_lab.runs.records_table import RecordsMixin
from lipschitz_lab.runs.schema import Handle, connect, log_event, migrate, retry_locked

#: where runs go unless told otherwise (relative to the working directory).
DEFAULT_DB = Path("runs") / "lipschitz_lab.db"
#: environment variable naming the run store; it wins over DEFAULT_DB, an explicit path wins over it
STORE_ENV = "LIPSCHITZ_LAB_STORE"

#: a run's life: "running" until the trainer says how it ended.
STATUSES = ("running", "finished", "stopped", "diverged", "failed")

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return status


def store_path(path: str | os.PathLike | None = None) -> Path:
    """The one rule for finding the store: ``path`` when given and not empty; else
    ``$LIPSCHITZ_LAB_STORE`` when set and not empty; else :data:`DEFAULT_DB`."""
    if path is not None and str(path) != "":
        return Path(path)
    return Path(os.environ.get(STORE_ENV) or DEFAULT_DB)


def open_store(store: "RunStore | str | os.PathLike | None" = None) -> "RunStore":
    """The store at :func:`store_path` for a path (or None); ``store`` itself when it is a store:
    a :class:`RunStore`, or an object with the same writing surface (a study worker's proxy,
    :class:`~lipschitz_lab.studies.remote_store.RemoteStore`)."""
    if store is None or isinstance(store, (str, os.PathLike)):
        return RunStore(store_path(store))
    if isinstance(store, RunStore) or all(hasattr(store, m) for m in ("create_run", "append_records", "set_status")):
        return store
    raise ValueError(f"store={store!r}: expected a path or a run store")


def new_run_id(now: datetime | None = None) -> str:
    """A fresh run id, e.g. ``r-20261128-103001-ab12`` (callers check it is unused)."""
    now = now or _now()
    return f"r-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class RunStore(RecordsMixin):
    """One SQLite file of runs.  ``path`` may be a ``str`` or a ``Path``.

    Picklable (only the path travels), so a spawned worker can be handed the store.
    """

    #: who writes through this store, for the ``events`` history (a launcher sets it)
    owner: str | None = None

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
            handle = self._local.handle = Handle(connect(self.path))
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
                   key: str | None = None, run_id: str | None = None) -> str:
        """Register a new run with status "running"; returns its id, e.g. ``r-20261128-103001-ab12``.

        ``run_id`` proposes the id (a Ray worker draws one before the driver writes the row);
        when another run has it already, a fresh one is drawn: the returned id is the run's.
        """
        proposed = run_id
        config_json = codec.encode_config(config)

        def insert(conn: sqlite3.Connection) -> str:
            if key is not None:
                row = conn.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    raise ValueError(f"key {key!r} already names run {row[0]!r}")
            now = _now()
            stamp = now.isoformat(timespec="seconds")
            run_id = proposed or new_run_id(now)
            # 4 hex digits: a clash within one second is rare, so just draw again
            while conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None:
                run_id = new_run_id(now)
            conn.execute(
                "INSERT INTO runs (id, name, study, key, config, status, reason, created, updated)"
                " VALUES (?, ?, ?, ?, ?, 'running', NULL, ?, ?)",
                (run_id, name, study, key, config_json, stamp, stamp))
            log_event(conn, "status", run_id=run_id, key=key, detail="running", owner=self.owner)
            return run_id

        return self._write(insert)

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Record how a run stands; ``reason`` says why (e.g. where it diverged)."""
        _check_status(status)

        def update(conn: sqlite3.Connection) -> None:
            self._require(conn, run_id)
            conn.execute("UPDATE runs SET status = ?, reason = ?, updated = ? WHERE id = ?",
                         (status, reason, _now().isoformat(timespec="seconds"), run_id))
            (key,) = conn.execute("SELECT key FROM runs WHERE id = ?", (run_id,)).fetchone()
            log_event(conn, "status", run_id=run_id, key=key, detail=status, owner=self.owner)

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

    def checkpoint_path(self, run_id: str) -> Path:
        """Where the trainer writes and reads the run's checkpoint: ``<store folder>/checkpoints/<id>.pt``."""
        return self.path.parent / "checkpoints" / f"{run_id}.pt"

    def checkpoint_saved(self, run_id: str, path: str | os.PathLike, epoch: int) -> None:
        """The checkpoint of ``epoch`` is at ``path``: register it as the run's ``checkpoint`` artifact."""
        self.add_artifact(run_id, "checkpoint", path)

    def publish_checkpoint(self, run_id: str, staged: str | os.PathLike, epoch: int) -> Path:
        """Move the checkpoint of ``epoch``, written to ``staged`` (:func:`~lipschitz_lab.runs.checkpoint.
        stage_checkpoint`), to :meth:`checkpoint_path` and register it, in one write transaction:
        a :class:`~lipschitz_lab.runs.leases.LeasedStore` checks the run's lease in that same
        transaction, so a launcher that lost the run replaces no file.  (A worker's proxy ships the
        bytes to the driver here instead.)  The staged file is gone afterwards, either way."""
        from lipschitz_lab.runs.checkpoint import publish
        path = self.checkpoint_path(run_id)

        def move(conn: sqlite3.Connection) -> Path:
            self._require(conn, run_id)
            publish(staged, path)
            conn.execute("INSERT OR REPLACE INTO artifacts (run_id, kind, path) VALUES (?, ?, ?)",
                         (run_id, "checkpoint", os.fspath(path)))
            return path

        try:
            return self._write(move)
        finally:
            Path(staged).unlink(missing_ok=True)


_RUN_SELECT = "SELECT id, name, study, key, config, status, reason, created, updated FROM runs"
