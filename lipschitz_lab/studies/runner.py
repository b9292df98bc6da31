"""Run a study: every (policy, seed) run, each trained once, whoever launches it.

Every run lands in the run store under its stable key (:class:`~lipschitz_lab.studies.spec.RunPlan`),
so running a study again picks up where the last one stopped:

- every policy x seed config is checked first (:func:`~lipschitz_lab.studies.spec.validate_study`):
  one bad policy raises ConfigError, and nothing trains or is stored;
- a run whose key is in the store with status ``finished`` or ``diverged``
  is skipped (a diverged run would diverge again: same config, same seed);
- a ``failed`` run keeps its error and is skipped too, until a launch asks for it
  again (``retry_failed=True``, the CLI's ``--retry-failed``); then it resumes like a
  stopped one;
- a run left ``running`` (its launcher died) or ``stopped`` is resumed from its last
  checkpoint (``train(..., resume=run_id)``); with no checkpoint (stopped in its first
  epoch) it restarts in place, and the outcome says so; a resume that fails leaves
  the run ``failed`` with its error (never a silent re-run from scratch);
- anything else is trained from scratch.

A study may be launched from two places at once (the study panel and a terminal):
a launcher claims a run's lease in the store before it trains it, and a heartbeat
thread renews the lease while the run trains (:mod:`lipschitz_lab.runs.leases`).
Another launcher leaves a run with a live lease alone and, with ``wait=True``, waits
for it; a run whose launcher went silent for longer than its ``lease_timeout_s`` is
taken over and resumed from its checkpoint.

A run that diverges ends as ``diverged`` (the trainer's own verdict); a run that
raises is recorded as ``failed`` with the error as its reason.  Neither stops the
study.  Where the runs train is the backend's business (:mod:`~lipschitz_lab.studies.backends`):
this process, worker processes, or a Ray cluster.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lipschitz_lab.runs import RunStore, open_store
from lipschitz_lab.runs.leases import LEASE_TTL_S, Heartbeat, new_owner
from lipschitz_lab.studies.backends import BACKENDS, backend_class, make_backend
from lipschitz_lab.studies.local import InlineBackend
from lipschitz_lab.studies.execute import DONE, done, execute_run
from lipschitz_lab.studies.launch import Launch, RunOutcome
from lipschitz_lab.studies.spec import RunPlan, StudySpec, validate_study

__all__ = ["RunOutcome", "StudyResult", "plan_study", "run_study", "execute_run", "DONE", "BACKENDS"]


@dataclass
class StudyResult:
    spec: StudySpec
    store_path: Path
    outcomes: list[RunOutcome]
    wall_time: float
    backend: str = "local"
    startup_s: float = 0.0       # of wall_time: starting or connecting to the backend (a Ray cluster)

    def count(self, *, action: str | None = None, status: str | None = None) -> int:
        return sum((action is None or o.action == action) and (status is None or o.status == status)
                   for o in self.outcomes)

    @property
    def trained(self) -> list[RunOutcome]:
        """Runs this call trained (new, resumed or restarted)."""
        return [o for o in self.outcomes if o.action in ("new", "resumed", "restarted")]

    def table(self, target_acc: float | None = None):
        """The results table, read back from the store (:func:`~lipschitz_lab.studies.results.study_table`)."""
        from lipschitz_lab.studies.results import study_table
        return study_table(RunStore(self.store_path), self.spec,
                           target_acc=self.spec.target_acc if target_acc is None else target_acc)


def plan_study(spec: StudySpec, store: RunStore,
               retry_failed: bool = False) -> list[tuple[RunPlan, str, str | None]]:
    """``(plan, action, run_id)`` per run: ``new``, ``skipped`` or ``resume``, from the store."""
    out = []
    for plan in spec.runs():
        run = store.find_run(plan.key)
        if run is None:
            out.append((plan, "new", None))
        elif done(run, retry_failed):
            out.append((plan, "skipped", run["id"]))
        else:
            out.append((plan, "resume", run["id"]))
    return out


def _check(workers, backend, address, lease_timeout_s, cpus_per_run) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers={workers!r}: must be an integer >= 1")
    backend_class(backend)                  # a bad name, or a missing ray: before anything is claimed
    if address is not None and backend != "ray":
        raise ValueError(f"address={address!r}: only backend='ray' connects to an address")
    if isinstance(lease_timeout_s, bool) or not isinstance(lease_timeout_s, (int, float)) or not lease_timeout_s > 0:
        raise ValueError(f"lease_timeout_s={lease_timeout_s!r}: must be a number of seconds > 0")
    if isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, int) or cpus_per_run < 1:
        raise ValueError(f"cpus_per_run={cpus_per_run!r}: must be an integer >= 1")


def run_study(spec: StudySpec, store: RunStore | str | os.PathLike | None = None, *, workers: int | None = None,
              backend: str = "local", address: str | None = None, stop_event: threading.Event | None = None,
              on_start: Callable[[RunPlan], None] | None = None,
              on_outcome: Callable[[RunOutcome], None] | None = None,
              lease_timeout_s: float = LEASE_TTL_S, wait: bool = True, cpus_per_run: int = 1,
              retry_failed: bool = False, validate: bool = True) -> StudyResult:
    """Train every run of ``spec`` that the store does not hold finished; return the outcomes.

    ``backend="local"``: ``workers=1`` (the default) trains in this process, one run
    after another; ``workers=N`` in N spawned processes (each with cores/N torch
    threads).  ``backend="ray"``: one Ray task per run with ``cpus_per_run`` CPUs (and
    a GPU when the config trains on CUDA) on the cluster at ``address`` (``"auto"``,
    ``"ray://host:port"``; None starts a local one for the call); ``workers`` caps the
    runs in flight (default: as many as the cluster fits).

    Runs another launcher holds are left to it; ``wait=True`` waits for them (and
    takes them over if that launcher dies), ``wait=False`` reports them as ``held``.
    ``lease_timeout_s``: how long this launcher may stay silent before another takes
    its runs over.  Setting ``stop_event`` stops the runs in flight at their next batch
    (status ``stopped``, resumable) and starts no more.  ``on_start``/``on_outcome``
    are called in the calling thread.  ``retry_failed``: train the runs the store holds
    ``failed`` again (from their checkpoints).  ``validate=False``: the caller has run
    :func:`~lipschitz_lab.studies.spec.validate_study` already (the CLI, the study panel).
    """
    _check(workers, backend, address, lease_timeout_s, cpus_per_run)
    t0 = time.perf_counter()
    plans = validate_study(spec) if validate else spec.runs()    # every config, before anything is stored
    store = open_store(store)
    owner = new_owner()
    launch = Launch(plans, store, owner, float(lease_timeout_s), wait=wait, stop_event=stop_event,
                    on_start=on_start, on_outcome=on_outcome, retry_failed=retry_failed)
    launch.skip_done()
    if launch.todo:
        where = make_backend(backend, path=store.path, workers=workers, address=address, n_runs=len(plans),
                             n_todo=len(launch.todo), stop_event=stop_event, cpus_per_run=cpus_per_run,
                             devices=tuple(sorted({p.config.get("device", "auto") for p in plans})))
    else:                                   # nothing to train: start no cluster
        where = InlineBackend(store.path, stop_event)
    heartbeat = Heartbeat(store.path, owner, float(lease_timeout_s), on_lost=launch.lost)
    try:
        launch.run(where, heartbeat)
    finally:
        heartbeat.stop()
        try:
            where.close()
        finally:
            launch.release_all()
    return StudyResult(spec, store.path, launch.outcomes, time.perf_counter() - t0, where.name, where.startup_s)
