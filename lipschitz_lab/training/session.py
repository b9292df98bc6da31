"""2) The run in the store: create or resume it, write checkpoints, and close it.

Rank 0 writes (the store, the checkpoints); every rank knows the run id.  The
store is reached only through the calls below (create_run, get_run, truncate,
set_status, checkpoint_path, publish_checkpoint and the StoreWriter's appends), so
a store that forwards them elsewhere (a Ray worker's) works the same, and a store
that checks a study run's lease in each write (a LeasedStore) fences every one of
them: the records, the status, and the checkpoint, which is written beside its place
and moved there inside the store's write transaction.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lipschitz_lab.records import Record
from lipschitz_lab.runs import RunStore, StoreWriter, load_checkpoint, open_store
from lipschitz_lab.runs.checkpoint import rng_state, set_rng_state, stage_checkpoint
from lipschitz_lab.training.setup import Setup

__all__ = ["Session", "open_session"]


@dataclass
class Session:
    store: RunStore
    run_id: str
    writer: StoreWriter
    subscribers: list[Callable[[Record], None]]
    start_epoch: int = 0
    step: int = 0
    t0: float = field(default_factory=time.perf_counter)
    steps_per_epoch: int | None = None     # for progress: the length of the training loader
    epochs: int | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def announce(self, status: str, reason: str | None, step: int, epoch: int) -> None:
        """Status records go to subscribers; the store keeps the status in the run's row."""
        for sink in self.subscribers:
            sink({"kind": "status", "status": status, "run_id": self.run_id, "reason": reason,
                  "step": step, "epoch": epoch, "steps_per_epoch": self.steps_per_epoch,
                  "epochs": self.epochs})


def _share(value, world: int):
    """Rank 0's value on every rank (the run id)."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _resume(setup: Setup, store: RunStore, run_id: str) -> tuple[int, int, float]:
    """Load the run's checkpoint (model, optimizer, scheduler, RNG); ``(start_epoch, step, time)``."""
    path = store.checkpoint_path(run_id)
    if not Path(path).exists():
        if setup.rank == 0:
            store.truncate(run_id, after_epoch=-1)
        return 0, 0, 0.0
    # on the CPU: load_state_dict copies each tensor to its parameter's device, and the RNG
    # states must stay CPU tensors
    state = load_checkpoint(path, map_location="cpu")
    policy = setup.policy
    setup.model.load_state_dict(state["model"])
    policy.optimizer.load_state_dict(state["optimizer"])
    if policy.scheduler is not None and state.get("scheduler") is not None:
        policy.scheduler.load_state_dict(state["scheduler"])
    if policy.load_state is not None and state.get("policy") is not None:
        policy.load_state(state["policy"])
    if setup.monitor is not None and state.get("monitor") is not None:
        setup.monitor.load_state_dict(state["monitor"])
    set_rng_state(state["rng"])
    if setup.rank == 0:
        store.truncate(run_id, after_epoch=state["epoch"])
    return state["epoch"] + 1, state["step"], state["time"]


def open_session(setup: Setup, store, *, resume: str | None, run_key: str | None,
                 subscribers: list[Callable[[Record], None]]) -> Session:
    """The run in the store (new, or resumed from its checkpoint) and the sinks of its records."""
    store = open_store(store)
    run_id = None
    if setup.rank == 0:
        if resume:
            store.get_run(resume)                      # raises for an unknown id
            run_id = resume
        else:
            cfg = setup.config
            run_id = store.create_run(cfg.to_dict(), name=cfg.name, study=cfg.study, key=run_key)
    run_id = _share(run_id, setup.world)
    start_epoch, step, offset = 0, 0, 0.0
    if resume:
        start_epoch, step, offset = _resume(setup, store, run_id)
        if setup.rank == 0:
            store.set_status(run_id, "running")
    writer = StoreWriter(store, run_id, enabled=setup.rank == 0)
    session = Session(store, run_id, writer, list(subscribers), start_epoch, step,
                      time.perf_counter() - offset, len(setup.train_loader), setup.config.epochs)
    setup.log.sinks[:0] = [writer, *session.subscribers]
    return session


def save(setup: Setup, session: Session, epoch: int) -> None:
    """The end-of-epoch checkpoint (rank 0): staged beside its place, then moved there by the
    store, atomically and, for a study's run, only while this launcher holds its lease."""
    if not setup.config.checkpoint or setup.rank != 0:
        return
    policy = setup.policy
    path = session.store.checkpoint_path(session.run_id)
    state: dict[str, Any] = {
        "model": setup.model.state_dict(), "optimizer": policy.optimizer.state_dict(),
        "scheduler": policy.scheduler.state_dict() if policy.scheduler is not None else None,
        "policy": policy.state() if policy.state is not None else None,
        "monitor": setup.monitor.state_dict() if setup.monitor is not None else None,
        "rng": rng_state(), "epoch": epoch, "step": session.step, "time": session.elapsed()}
    session.store.publish_checkpoint(session.run_id, stage_checkpoint(path, state), epoch)
