r"""StepLog: step records whose numbers stay on the device until a flush, delivered in order.

A training step must not wait for the GPU: ``loss.item()``, ``.tolist()`` and
friends stop the host until every queued kernel has run.  So each step adds one
*entry* to the log instead of a record: the fields the host already knows
(step, epoch, time, ...) and the device tensors that hold the numbers (K_z,
the gradient maxima, the rate, the loss, ...).  Nothing is copied yet.

Every ``flush_every`` entries, at an epoch's end, when a caller asks
(:meth:`StepLog.flush`), and at :meth:`close`, the log

1. concatenates the pending tensors of all entries into one vector (one kernel),
2. copies it to pinned host memory with ``non_blocking=True`` (on CUDA the copy
   of one flush is read at the next one, so even the flush does not wait),
3. decodes each entry into a plain record and hands the records, in order, to
   its sinks (the run store, a progress bar, the live panel, subscribers).

So sinks see every step's record, in order, a few steps late.

Each producer adds a named *segment* to the step's entry (the trainer: ``loss``,
``correct``; LipschitzLR: ``schedule``).  A segment's decoder turns its numbers into a
:class:`Part`: the record fields it knows, or the problem it found.  The entry's
``compose`` merges the parts into the record, in one place (the default merges their
fields in order; the trainer passes its own).

Divergence is read from the same numbers: a part's ``problem`` is a message
for a NaN or inf ("step 37: K_z is nan (...)").  The first entry with one ends
the delivery: the records before it are delivered, it and every later entry are
dropped (they were computed from the bad step), and the flush raises
:class:`~lipschitz_lab.probe.DivergenceError` with that message.  Under
``torch.distributed`` every rank flushes at the same steps, and the first bad
step is agreed with one MIN all-reduce per flush, not one per step.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.records import Record

__all__ = ["StepLog", "Segment", "Part", "merge_parts", "deliver_at_exit"]

@dataclass
class Part:
    """What one segment's numbers say: record fields, or the NaN/inf ``problem`` it found."""

    fields: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


#: decode(values) -> Part: a segment's numbers (plain floats) as named fields
Decoder = Callable[[list[float]], Part]
#: compose(host fields, parts by segment name) -> the step's record
Composer = Callable[[dict[str, Any], dict[str, Part]], Record]


def merge_parts(host: dict[str, Any], parts: dict[str, Part]) -> Record:
    """The default composer: each part's fields in the order they were added, then the host's
    fields that no part gave."""
    record: Record = {}
    for part in parts.values():
        record.update(part.fields)
    for key, value in host.items():
        record.setdefault(key, value)
    return record


@dataclass
class Segment:
    """One producer's share of an entry: its name, its tensors, how many numbers they hold, its decoder."""

    name: str
    tensors: list[torch.Tensor]
    size: int
    decode: Decoder
    priority: int = 1          # a lower number's problem wins (the trainer's loss check comes first)


@dataclass
class _Entry:
    host: dict[str, Any]
    compose: Composer = merge_parts
    segments: list[Segment] = field(default_factory=list)
    keep: bool = True          # False: decoded for its divergence check only, not delivered


class StepLog:
    """Entries of device numbers in order; see the module docstring.

    Args:
        flush_every: entries between flushes.  The first entry is flushed at once
            (the first record reaches a panel without waiting).
        sinks: callables that receive each decoded record, in order.
    """

    def __init__(self, flush_every: int = 32, sinks: Iterable[Callable[[Record], None]] = ()):
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be an integer >= 1; got flush_every={flush_every!r}")
        self.flush_every = flush_every
        self.sinks: list[Callable[[Record], None]] = list(sinks)
        self.last: Record | None = None
        self.delivered = 0
        self.diverged_at: int | None = None   # the step of the first bad entry, once one was read
        self._pending: list[_Entry] = []
        self._in_flight: list[tuple[list[_Entry], torch.Tensor, Any]] = []
        self._open: _Entry | None = None
        self._entries = 0

    # -- adding ------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close_entry` (a driver is building an entry)."""
        return self._open is not None

    def open(self, compose: Composer = merge_parts, **host: Any) -> None:
        """Start this step's entry with fields the host knows (step, epoch, ...) and its composer."""
        if self._open is not None:
            raise RuntimeError("StepLog.open(): the previous entry was not closed")
        self._open = _Entry(dict(host), compose)

    def add(self, name: str, tensors: list[torch.Tensor], decode: Decoder, *, priority: int = 1,
            **host: Any) -> None:
        """Add a named segment (device tensors, 0-d or 1-d) and host fields to the open entry."""
        if self._open is None:
            raise RuntimeError("StepLog.add() without open()")
        size = sum(t.numel() for t in tensors)      # shapes are on the host: no sync
        self._open.segments.append(Segment(name, tensors, size, decode, priority))
        self._open.host.update(host)

    def contribute(self, name: str, tensors: list[torch.Tensor], decode: Decoder, **host: Any) -> None:
        """Add a segment to the entry a driver opened for this step (the trainer's), or, with
        none open (a plain loop, where this producer is the only one), to an entry of its own."""
        if self._open is not None:
            self.add(name, tensors, decode, **host)
            return
        self.open(**host)
        self.add(name, tensors, decode)
        self.close_entry()

    def close_entry(self, *, keep: bool = True) -> None:
        """End the entry; flush when ``flush_every`` entries are waiting (or on the first)."""
        entry, self._open = self._open, None
        if entry is None:
            raise RuntimeError("StepLog.close_entry() without open()")
        entry.keep = keep
        self._pending.append(entry)
        self._entries += 1
        if self._entries == 1 or len(self._pending) >= self.flush_every:
            self.flush(wait=False)

    def discard_open(self) -> None:
        """Drop an entry that was opened but will not be completed (a stop mid-step)."""
        self._open = None

    # -- flushing ----------------------------------------------------------------------
    def flush(self, wait: bool = True) -> list[Record]:
        """Copy the pending numbers to the host and deliver what has arrived.

        ``wait=False`` (the periodic flush) starts the copy and delivers only the
        batches whose copy has finished; ``wait=True`` delivers everything.
        Returns the records delivered by this call.  Raises DivergenceError at
        the first bad step.
        """
        if self._pending:
            self._start_copy(self._pending)
            self._pending = []
        out: list[Record] = []
        while self._in_flight:
            entries, host, event = self._in_flight[0]
            if event is not None and not wait and not event.query():
                break
            if event is not None:
                event.synchronize()
            self._in_flight.pop(0)
            out.extend(self._deliver(entries, host.tolist()))
        return out

    def _start_copy(self, entries: list[_Entry]) -> None:
        tensors = [t.reshape(-1).to(torch.float64) for e in entries for s in e.segments for t in s.tensors]
        if not tensors:
            self._in_flight.append((entries, torch.zeros(0, dtype=torch.float64), None))
            return
        flat = torch.cat(tensors)
        if flat.device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._in_flight.append((entries, host, event))
        else:
            self._in_flight.append((entries, flat.to("cpu"), None))

    def _deliver(self, entries: list[_Entry], values: list[float]) -> list[Record]:
        records, bad_at, message, pos = [], None, None, 0
        for i, entry in enumerate(entries):
            parts: dict[str, Part] = {}
            found: list[tuple[int, str]] = []
            for seg in entry.segments:
                part = seg.decode(values[pos:pos + seg.size])
                pos += seg.size
                parts[seg.name] = part
                if part.problem:
                    found.append((seg.priority, part.problem))
            if found:
                bad_at, message = i, min(found, key=lambda pm: pm[0])[1]
                break
            if entry.keep:
                records.append(entry.compose(entry.host, parts))
        bad_at, message = self._agree(entries, bad_at, message)
        if bad_at is not None:
            records = [r for r in records if r.get("step", -1) < entries[bad_at].host.get("step", math.inf)]
        for record in records:
            self.last = record
            self.delivered += 1
            for sink in list(self.sinks):
                sink(record)
        if bad_at is not None:
            self._pending, self._in_flight = [], []
            self.diverged_at = entries[bad_at].host.get("step")
            raise DivergenceError(message)
        return records

    @staticmethod
    def _agree(entries, bad_at, message):
        """Under torch.distributed: every rank stops at the earliest bad step of any rank."""
        from lipschitz_lab import distributed
        if not distributed.is_distributed() or not entries:
            return bad_at, message
        mine = entries[bad_at].host.get("step", 0) if bad_at is not None else math.inf
        first = distributed.min_over_ranks(float(mine))
        if math.isinf(first):
            return None, None
        if bad_at is None or mine != first:
            idx = next((i for i, e in enumerate(entries) if e.host.get("step") == first), len(entries) - 1)
            return idx, f"step {int(first)}: another rank diverged"
        return bad_at, message

    def close(self) -> None:
        """Deliver everything (raises DivergenceError like :meth:`flush`)."""
        self._open = None
        self.flush(wait=True)


def deliver_at_exit(log: StepLog) -> None:
    """A loop that never called flush() or close(): deliver its last records at exit (or when its
    owner is collected).  An error in them cannot be raised there: it is printed."""
    import sys
    try:
        log.close()
    except Exception as exc:            # DivergenceError, LossScaleError: said, not lost
        print(f"lipschitz-lab: the last, unflushed records hold an error: {type(exc).__name__}: {exc}",
              file=sys.stderr)
