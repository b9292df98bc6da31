"""Leases: which launcher trains a run, so that each run of a study trains once.

A launcher (one call of ``run_study``: a terminal, the study panel, ...) claims a
run before it trains it: one row of the ``leases`` table, keyed by the run's key,
holding the launcher's id and a heartbeat.  While the run trains, the launcher's
:class:`Heartbeat` thread renews the heartbeat every ``ttl / 4`` seconds.  Another
launcher finds the lease live and leaves the run alone; once the heartbeat has
stopped for longer than ``ttl`` (the launcher died), the next claim takes the run
over and resumes it from its checkpoint.  The owner states its own ``ttl`` in the
row, so launchers with different timeouts agree on when a lease is stale.

A claim is one ``BEGIN IMMEDIATE`` transaction that reads the row and writes it
only when it is free, stale or already the claimer's (a compare-and-set); a beat
writes only where the owner is still the beater.  A run's training writes through
a :class:`LeasedStore`, which checks the lease inside each write's transaction: a
launcher that stalled past its ttl and was taken over can write nothing more.
Every claim, takeover, release and lost lease is a row of ``events``.
"""
from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from lipschitz_lab.runs.schema import log_event
from lipschitz_lab.runs.store import RunStore

__all__ = ["LEASE_TTL_S", "Lease", "Claim", "LeaseLost", "LeasedStore", "Heartbeat", "new_owner", "claim",
           "beat", "release", "leases", "events", "log"]

#: seconds a launcher may stay silent before its runs are taken over; long enough for a
#: busy machine's scheduler hiccups, short enough that a crashed terminal costs half a minute
LEASE_TTL_S = 30.0


@dataclass(frozen=True)
class Lease:
    key: str
    owner: str
    heartbeat: float      # unix time of the last beat
    ttl: float            # the owner beats again within ttl seconds
    claimed: float

    def age(self, now: float | None = None) -> float:
        """Seconds since the last beat."""
        return (time.time() if now is None else now) - self.heartbeat

    def live(self, now: float | None = None) -> bool:
        return self.age(now) <= self.ttl


@dataclass(frozen=True)
class Claim:
    granted: bool
    previous: Lease | None    # granted: the stale lease it took over (or None); refused: the live holder


class LeaseLost(RuntimeError):
    """A write for a run whose lease another launcher holds now."""


def new_owner() -> str:
    """A launcher's id: ``host:pid:random`` (the pid says which process, the token which call)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _lease(row: tuple | None) -> Lease | None:
    return None if row is None else Lease(*row)


_SELECT = "SELECT key, owner, heartbeat, ttl, claimed FROM leases"


def _run_id(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def claim(store: RunStore, key: str, owner: str, ttl: float) -> Claim:
    """Take the lease of ``key`` for ``owner`` unless another owner's lease is live."""
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not ttl > 0:
        raise ValueError(f"lease_timeout_s={ttl!r}: must be a number of seconds > 0")

    def cas(conn: sqlite3.Connection) -> Claim:
        now = time.time()
        held = _lease(conn.execute(_SELECT + " WHERE key = ?", (key,)).fetchone())
        if held is not None and held.owner != owner and held.live(now):
            return Claim(False, held)
        conn.execute("INSERT OR REPLACE INTO leases (key, owner, heartbeat, ttl, claimed) VALUES (?, ?, ?, ?, ?)",
                     (key, owner, now, float(ttl), now))
        stale = held if held is not None and held.owner != owner else None
        detail = None if stale is None else f"from {stale.owner}, silent for {stale.age(now):.1f}s"
        log_event(conn, "claim" if stale is None else "takeover", run_id=_run_id(conn, key), key=key,
                  detail=detail, owner=owner)
        return Claim(True, stale)

    return store._write(cas)


def beat(store: RunStore, owner: str, keys: Iterable[str]) -> set[str]:
    """Renew ``owner``'s leases of ``keys``; returns the keys it no longer holds."""
    keys = list(keys)

    def renew(conn: sqlite3.Connection) -> set[str]:
        now, lost = time.time(), set()
        for key in keys:
            if conn.execute("UPDATE leases SET heartbeat = ? WHERE key = ? AND owner = ?",
                            (now, key, owner)).rowcount == 0:
                lost.add(key)
                log_event(conn, "lost", run_id=_run_id(conn, key), key=key, owner=owner)
        return lost

    return store._write(renew) if keys else set()


def release(store: RunStore, key: str, owner: str) -> bool:
    """Give the lease of ``key`` back (only ``owner``'s own); True when there was one."""
    def delete(conn: sqlite3.Connection) -> bool:
        if conn.execute("DELETE FROM leases WHERE key = ? AND owner = ?", (key, owner)).rowcount == 0:
            return False
        log_event(conn, "release", run_id=_run_id(conn, key), key=key, owner=owner)
        return True

    return store._write(delete)


def leases(store: RunStore, prefix: str = "") -> dict[str, Lease]:
    """Every lease whose key starts with ``prefix`` (a study's keys start with ``<study>/``)."""
    rows = store._read(_SELECT + " WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
    return {row[0]: Lease(*row) for row in rows}


def events(store: RunStore, *, run_id: str | None = None, key: str | None = None,
           event: str | None = None) -> list[dict]:
    """The history rows, oldest first, optionally of one run (by id or key) and one kind."""
    where, params = [], []
    for column, value in (("run_id", run_id), ("key", key), ("event", event)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = "SELECT id, at, run_id, key, event, detail, owner FROM events"
    rows = store._read(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id", params)
    return [dict(zip(("id", "at", "run_id", "key", "event", "detail", "owner"), row)) for row in rows]


def log(store: RunStore, event: str, *, run_id: str | None = None, key: str | None = None,
        detail: str | None = None, owner: str | None = None) -> None:
    """Write one history row on its own (a launcher's notes: where a run trains, a retry)."""
    store._write(lambda conn: log_event(conn, event, run_id=run_id, key=key, detail=detail, owner=owner))


class LeasedStore(RunStore):
    """The store as seen by one run's training: every write first checks, in its own
    transaction, that ``owner`` still holds the lease of ``key``; else :class:`LeaseLost`."""

    def __init__(self, path, key: str, owner: str):
        super().__init__(path)
        self.key, self.owner = key, owner

    def _write(self, fn):
        def fenced(conn: sqlite3.Connection):
            row = conn.execute("SELECT owner FROM leases WHERE key = ?", (self.key,)).fetchone()
            if row is None or row[0] != self.owner:
                holder = "nobody" if row is None else row[0]
                raise LeaseLost(f"run {self.key!r}: its lease is held by {holder}, not by {self.owner}")
            return fn(conn)
        return super()._write(fenced)

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless ``owner`` holds the lease (before a write outside the file)."""
        self._write(lambda conn: None)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "key": self.key, "owner": self.owner}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.key, self.owner = state["key"], state["owner"]

    def __repr__(self) -> str:
        return f"LeasedStore({str(self.path)!r}, key={self.key!r}, owner={self.owner!r})"


class Heartbeat:
    """A daemon thread that renews ``owner``'s leases every ``ttl / 4`` seconds.

    ``on_lost(key)`` is called (in the heartbeat thread) for a lease found taken over.
    """

    def __init__(self, path, owner: str, ttl: float, on_lost: Callable[[str], None] | None = None):
        self.path, self.owner, self.interval = path, owner, ttl / 4
        self.on_lost = on_lost
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lipschitz-lab-heartbeat", daemon=True)
        self._thread.start()

    def add(self, key: str) -> None:
        with self._lock:
            self._keys.add(key)

    def discard(self, key: str) -> None:
        with self._lock:
            self._keys.discard(key)

    def _run(self) -> None:
        store = RunStore(self.path)           # this thread's own connection
        while not self._done.wait(self.interval):
            with self._lock:
                keys = sorted(self._keys)
            try:
                lost = beat(store, self.owner, keys)
            except sqlite3.Error:             # locked past every retry: the next beat tries again
                continue
            for key in lost:
                self.discard(key)
                if self.on_lost is not None:
                    self.on_lost(key)
        store.close()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
