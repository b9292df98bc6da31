"""The training loop: ``train(config) -> Run``, read top to bottom.

The CLI, the panels and the studies all call it.  Each step adds one entry to
the run's :class:`~lipschitz_lab.steplog.StepLog` (the scheduler's numbers and
the loss, still on the device); every ``flush_every`` steps and at each
epoch's end the entries become plain records, in order, for the run store and
the subscribers; each epoch adds one epoch record.  The pieces live in
:mod:`lipschitz_lab.training`: 1) setup, 2) session, 3) steps, 4) the epoch's end.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from lipschitz_lab.config import TrainConfig
from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.records import Record
from lipschitz_lab.runs import RunStore
from lipschitz_lab.training.session import Session, open_session, save
from lipschitz_lab.training.setup import Setup, build, select_device
from lipschitz_lab.training.steps import EpochSums, Stopped, end_epoch, evaluate, train_step

__all__ = ["Run", "train", "select_device", "evaluate"]


@dataclass
class Run:
    run_id: str | None
    status: str
    reason: str | None
    config: TrainConfig
    store_path: Path
    epochs: list[Record] = field(default_factory=list)
    steps: int = 0
    wall_time: float = 0.0

    @property
    def final(self) -> Record | None:
        return self.epochs[-1] if self.epochs else None


def train(config: TrainConfig | dict, *, store: RunStore | str | None = None,
          subscribers: Iterable[Callable[[Record], None]] = (), stop_event: threading.Event | None = None,
          progress: bool | None = None, resume: str | None = None, run_key: str | None = None) -> Run:
    """Train one run and return it; see :class:`~lipschitz_lab.config.TrainConfig`.

    Raises :class:`~lipschitz_lab.config.ConfigError` before any run is created
    when the config cannot work.  NaN/inf ends the run with status ``diverged``
    at the first bad step; the stop event ends it with ``stopped`` within one
    batch; both keep every record up to there.
    """
    setup = build(config)                                                    # 1) data, model, policy
    session = open_session(setup, store, resume=resume, run_key=run_key,     # 2) the run in the store
                           subscribers=list(subscribers))
    run = Run(session.run_id, "running", None, setup.config, Path(session.store.path))
    bar = _progress(setup, progress)
    session.announce("running", None, session.step, session.start_epoch)
    epoch = session.start_epoch
    try:
        for epoch in range(session.start_epoch, setup.config.epochs):
            sums = _train_epoch(setup, session, epoch, stop_event, bar)       # 3) one epoch of steps
            run.epochs.append(end_epoch(setup, session, epoch, sums))         # 4) its end
            save(setup, session, epoch)
            if _at_max_steps(setup, session):
                break
        run.status = "finished"
    except DivergenceError as exc:
        run.status, run.reason = "diverged", str(exc)
    except Stopped as exc:
        run.status, run.reason = "stopped", str(exc)
    except Exception as exc:
        run.status, run.reason = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _close(setup, session, run, epoch, bar)                              # 5) close
    return run


def _progress(setup: Setup, progress: bool | None):
    if progress is None:
        progress = setup.rank == 0 and sys.stderr.isatty()
    if not progress:
        return None
    from lipschitz_lab.training.progress import ProgressBar
    bar = ProgressBar(setup.config, len(setup.train_loader))
    setup.log.sinks.append(bar.on_record)
    return bar


def _at_max_steps(setup: Setup, session: Session) -> bool:
    return setup.config.max_steps is not None and session.step >= setup.config.max_steps


def _train_epoch(setup: Setup, session: Session, epoch: int, stop_event, bar) -> EpochSums:
    setup.train_loader.set_epoch(epoch)           # the same batches after a resume
    setup.net.train()
    if setup.policy.on_train:
        setup.policy.on_train()
    sums = EpochSums(setup.device)
    if bar is not None:
        bar.start_epoch(epoch)
    for x, y in setup.train_loader:
        train_step(setup, session, x, y, epoch, sums)
        if stop_event is not None and stop_event.is_set():
            raise Stopped(f"stopped by the user at step {session.step}")
        if _at_max_steps(setup, session):
            break
    return sums


def _close(setup: Setup, session: Session, run: Run, epoch: int, bar) -> None:
    """Deliver what is queued, write the status, tell the subscribers, release the hooks."""
    setup.log.discard_open()
    try:
        setup.log.close()
    except DivergenceError as exc:        # a stop or an error flushed a step that had diverged
        if run.status != "failed":
            run.status, run.reason = "diverged", str(exc)
    if setup.log.diverged_at is not None:
        session.step = setup.log.diverged_at
    run.steps, run.wall_time = session.step, session.elapsed()
    if setup.policy.lipschitz:
        setup.policy.scheduler.close()
    if setup.monitor is not None:
        setup.monitor.close()
    session.writer.close()
    if bar is not None:
        bar.close()
    if setup.rank == 0:
        session.store.set_status(session.run_id, run.status, run.reason)
    session.announce(run.status, run.reason, session.step, epoch)
