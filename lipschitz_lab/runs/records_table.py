"""A run's records in the store: append, read back, truncate at a checkpoint, export.

A mixin of :class:`~lipschitz_lab.runs.store.RunStore`: it uses the store's
``_write`` (one transaction), ``_read`` and ``_require``.
"""
from __future__ import annotations

import operator
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from lipschitz_lab.runs import codec
from lipschitz_lab.runs.frames import records_frame


def _int_or_none(record: dict, field: str) -> int | None:
    value = record.get(field)
    if value is None:
        return None
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"record field {field!r} must be an int or None, got {value!r}") from None


def _stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RecordsMixin:
    """Step and epoch records of a run, in the order they were appended."""

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
            conn.execute("UPDATE runs SET updated = ? WHERE id = ?", (_stamp(), run_id))

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

