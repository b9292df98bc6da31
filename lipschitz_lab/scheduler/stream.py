"""LipschitzLR's records, as a stream: the newest one, a flush, subscribers (a mixin on ``self.log``)."""
from __future__ import annotations

from collections.abc import Callable

from lipschitz_lab.records import Record, Subscriber
from lipschitz_lab.steplog import StepLog

__all__ = ["RecordStream"]


class RecordStream:
    """Records reach subscribers in order, a few steps late (:class:`~lipschitz_lab.steplog.StepLog`)."""

    log: StepLog

    @property
    def last_record(self) -> Record | None:
        """The newest step record.  Flushes the log first, so it waits for the device."""
        self.log.flush(wait=True)
        return self.log.last

    def flush(self) -> list[Record]:
        """Decode every queued record and deliver it to the subscribers (waits for the device)."""
        return self.log.flush(wait=True)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(record)`` for every step record, in order (a few steps late); returns
        a function that unsubscribes."""
        self.log.sinks.append(fn)
        return lambda: self.unsubscribe(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        if fn in self.log.sinks:
            self.log.sinks.remove(fn)
