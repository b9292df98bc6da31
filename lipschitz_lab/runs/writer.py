"""StoreWriter: the record subscriber that streams a run into the store."""
from __future__ import annotations

import threading

from lipschitz_lab.records import Record
from lipschitz_lab.runs.store import RunStore


class StoreWriter:
    """Buffer records and append them to ``store`` in batches.

    A batch is written every ``flush_every`` records, at every epoch record (so
    a run killed mid-epoch keeps every finished epoch) and on :meth:`close`.
    Each batch is one transaction.  In distributed training only rank 0 should
    write: pass ``enabled=rank == 0`` and the other ranks' writers do nothing.
    """

    def __init__(self, store: RunStore, run_id: str, flush_every: int = 200, *, enabled: bool = True):
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be an int >= 1, got {flush_every!r}")
        self.store, self.run_id, self.flush_every, self.enabled = store, run_id, flush_every, enabled
        self._buffer: list[Record] = []
        self._lock = threading.Lock()  # close() may come from another thread than the trainer's
        self.closed = False

    def __call__(self, record: Record) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self.closed:
                raise ValueError(f"StoreWriter for run {self.run_id!r} is closed")
            self._buffer.append(dict(record))  # a shallow copy: later edits by others don't leak in
            if len(self._buffer) >= self.flush_every or record.get("kind") == "epoch":
                self._flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self.store.append_records(self.run_id, self._buffer)
            self._buffer = []  # only once committed: a failed append can be retried

    def close(self) -> None:
        """Write what is buffered; further records raise.  Safe to call twice."""
        with self._lock:
            if self.enabled and not self.closed:
                self._flush()
            self.closed = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
