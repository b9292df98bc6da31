"""From the training thread to the kernel's event loop, in batches.

Widgets and Bokeh documents belong to the kernel's thread: their comm messages
must leave from it.  So the training thread does one thing only, it puts plain
records on a :class:`queue.SimpleQueue`; one function, :meth:`Bridge.flush`,
takes everything queued and applies it, on the kernel's asyncio loop.

The first record after a flush asks the loop (``call_soon_threadsafe``) to
flush ``interval`` seconds later (``call_later``); records arriving meanwhile
ride along in the same batch.  So the loop wakes at most about 1/interval
times a second, however fast the trainer steps, and the trainer never waits
on the front end.

Without a running loop (a plain script, pytest) nothing is scheduled: call
:meth:`flush` yourself.
"""
from __future__ import annotations

import asyncio
import atexit
import html
import queue
import re
import threading
import weakref
from typing import Any, Callable

Record = dict[str, Any]

#: seconds between two batches.  DESIGN.md began with 0.2 s; each batch costs the kernel's thread
#: (the GIL the training thread needs) a fixed share, so the app trained 1.8x slower than the CLI
#: under load at 0.2 s and 1.4x at 0.5 s (benchmarks/RESULTS.md, "The app against the CLI")
INTERVAL = 0.5


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread (the kernel's, inside a cell or a widget callback)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Bridge:
    """Queue records from any thread; apply them in batches on ``loop``.

    Args:
        apply: ``apply(batch)`` with the records queued since the last call, in order.
            Runs on ``loop`` (or in whichever thread calls :meth:`flush`).
        loop: where ``apply`` runs; ``None``: only by calling :meth:`flush`.
        interval: seconds a batch collects records before it is applied.
    """

    def __init__(self, apply: Callable[[list[Record]], None], loop: asyncio.AbstractEventLoop | None = None,
                 interval: float = INTERVAL):
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got interval={interval!r}")
        self._apply = apply
        self.loop = loop
        self.interval = interval
        self._queue: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._scheduled = False
        self.batches = 0    # how many times apply ran (the benchmark and tests read it)

    def put(self, record: Record) -> None:
        """Queue one record (any thread); the subscriber the trainer calls."""
        self._queue.put(record)
        loop = self.loop
        if loop is None:
            return
        # The record is queued before the flag is read: if a flush is pending it
        # clears the flag first and drains after, so it sees this record.
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._arm)
        except RuntimeError:  # the loop closed (kernel shutting down): nothing left to draw on
            with self._lock:
                self._scheduled = False

    __call__ = put

    def _arm(self) -> None:
        self.loop.call_later(self.interval, self._drain)

    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
        self.flush()

    def flush(self) -> int:
        """Apply everything queued now, in one batch; returns how many records it held."""
        batch: list[Record] = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if batch:
            self.batches += 1
            self._apply(batch)
        return len(batch)

    def pending(self) -> bool:
        return not self._queue.empty()


def poll_study(path, spec, put: Callable[[Record], None], done: threading.Event, interval: float) -> None:
    """Feed a study panel from the run store until ``done`` is set, then once more.

    Every ``interval`` s: each run's new step and epoch rows (``{"kind": "run", ...}``; a
    resume that truncated a run sends ``{"kind": "reset"}`` first), the study's progress
    (:func:`lipschitz_lab.studies.progress.progress`), and at the end ``{"kind": "panel",
    "event": "done"}``.  Reading the store, not subscribing, sees runs in worker processes
    and on other machines the same way as runs in this one.
    """
    from lipschitz_lab.runs import RunStore
    from lipschitz_lab.studies.progress import progress
    store = RunStore(path)                       # this thread's own connection
    plans = spec.runs()
    seen: dict[str, tuple[int, int, str | None]] = {}    # run_id -> (steps, epochs, status) sent
    while True:
        last = done.is_set()
        for plan in plans:
            run = store.find_run(plan.key)
            if run is None:
                continue
            rid, status = run["id"], run["status"]
            n_steps, n_epochs, was = seen.get(rid, (0, 0, None))
            if was is not None and was != "running" and status == was:
                continue                          # an ended run sends nothing new
            steps, epochs = store.records(rid, "step"), store.records(rid, "epoch")
            if len(steps) < n_steps or len(epochs) < n_epochs:
                put({"kind": "reset", "run_id": rid})
                n_steps = n_epochs = 0
            rows = [{"kind": "step", "step": r.get("step"), "lr": r.get("lr")} for r in steps[n_steps:]]
            rows += [{"kind": "epoch", "epoch": r.get("epoch"), "val_acc": r.get("val_acc"),
                      "test_acc": r.get("test_acc")} for r in epochs[n_epochs:]]
            if rows or status != was:
                put({"kind": "run", "run_id": rid, "policy": plan.policy, "seed": plan.seed, "status": status,
                     "rows": rows})
            seen[rid] = (len(steps), len(epochs), status)
        put({"kind": "progress", "line": progress(store, spec).line()})
        if last:
            break
        done.wait(interval)
    store.close()
    put({"kind": "panel", "event": "done"})


_BOKEHJS_LOADED = False
#: set to "1" where the page itself loads BokehJS (the app's Voilà template): no loader is emitted
BOKEHJS_IN_PAGE = "LIPSCHITZ_LAB_PAGE_BOKEHJS"


def in_kernel() -> bool:
    """True inside a Jupyter kernel (not in a terminal IPython, not in pytest)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def load_bokehjs(force: bool = False, *, in_page: bool = False) -> bool:
    """Put BokehJS into the page, inline (works offline), once per kernel.

    ``jupyter_bokeh.BokehModel`` renders with the page's ``window.Bokeh``; it
    does not bring its own.  ``in_page``: the page has it already (the app's
    template serves it): only remember that.  Returns True when it emitted the loader.
    """
    global _BOKEHJS_LOADED
    if in_page:
        _BOKEHJS_LOADED = True
    if not in_kernel() or (_BOKEHJS_LOADED and not force):
        return False
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE
    output_notebook(INLINE, hide_banner=True)
    _BOKEHJS_LOADED = True
    return True


#: status-line colours shared by the panels
STATUS_COLORS = {"running": "#1f77b4", "finished": "#2ca02c", "stopped": "#ff7f0e", "diverged": "#d62728",
                 "failed": "#d62728", "error": "#d62728"}


def status_html(state: str, text: str, verdict: str | None = None) -> str:
    """The panels' status line: the state in its colour, then the text (already escaped).  A run
    that finished with a verdict other than healthy (runs/verdict.py) is not drawn in success green."""
    color = STATUS_COLORS.get(state, "black")
    if state == "finished" and verdict not in (None, "healthy"):
        color = STATUS_COLORS["stopped"]
    return f"<span style='color:{color}'><b>{state}</b></span>: {text}"


#: panels with a run in flight; when the kernel exits (the app's page closed), their runs stop
_IN_FLIGHT: "weakref.WeakSet[BridgedPanel]" = weakref.WeakSet()
#: seconds a run gets to stop and record its status as the kernel exits
EXIT_GRACE_S = 3.0


@atexit.register
def _stop_in_flight() -> None:
    for panel in list(_IN_FLIGHT):
        panel.stop_at_exit()


class BridgedPanel:
    """What a panel fed through a :class:`Bridge` shares: its status line (``self.status``,
    a ``widgets.HTML``), a run that stops when the kernel exits, and, for tests and scripts,
    applying the queue by hand."""

    status: Any
    _bridge: Bridge | None
    _stop_event: threading.Event | None
    _active: bool

    @property
    def running(self) -> bool:
        return self._active

    def _in_flight(self) -> None:
        """Called as a run starts: if the kernel exits meanwhile, the run stops and says so."""
        _IN_FLIGHT.add(self)

    def stop_at_exit(self) -> None:
        """Stop the run in flight and give it :data:`EXIT_GRACE_S` to record "stopped"
        (a closed page's kernel is going: a run left "running" in the store would never end)."""
        if self._active and self._stop_event is not None:
            self._stop_event.set()
            self.wait(EXIT_GRACE_S)

    def wait(self, timeout: float | None = None) -> bool:   # the panels join their threads
        raise NotImplementedError

    def _set_status(self, state: str, text: str, verdict: str | None = None) -> None:
        self.status.value = status_html(state, text, verdict)

    @property
    def status_text(self) -> str:
        """The status line without its markup."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.status.value))

    # -- for tests and scripts (never inside a notebook cell) ------------------------------
    def flush(self) -> int:
        """Apply the queued records now, in this thread; returns how many there were."""
        return self._bridge.flush() if self._bridge is not None else 0
