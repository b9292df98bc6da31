"""Run a study: every (policy, seed) run, in this process or in spawned workers.

Every run lands in the run store under its stable key (:class:`~lipschitz_lab.studies.spec.RunPlan`),
so running a study again picks up where the last one stopped:

- a run whose key is in the store with status ``finished`` or ``diverged``
  is skipped (a diverged run would diverge again: same config, same seed);
- a run left ``running``, ``stopped`` or ``failed`` is resumed from its last
  checkpoint (``train(..., resume=run_id)``); with no checkpoint, or when the
  resume itself fails, it is deleted and restarted, and the outcome says so;
- anything else is trained from scratch.

A run that diverges ends as ``diverged`` (the trainer's own verdict); a run
that raises is recorded as ``failed`` with the error as its reason.  Neither
stops the study.

"running" in the store is taken to mean "its process died": do not run the
same study from two places at once, or both would train the unfinished runs.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from lipschitz_lab.runs import RunStore, open_store
from lipschitz_lab.studies.spec import RunPlan, StudySpec

__all__ = ["RunOutcome", "StudyResult", "plan_study", "run_study", "execute_run", "DONE"]

#: statuses that end a run for good: a re-run of the study skips them
DONE = ("finished", "diverged")


@dataclass
class RunOutcome:
    """What happened to one run of a study in this call."""

    policy: str
    seed: int
    key: str
    action: str                  # "new" | "resumed" | "restarted" | "skipped" | "not started"
    run_id: str | None = None
    status: str | None = None    # the store's status after the call
    reason: str | None = None
    note: str | None = None      # e.g. why a resume became a restart
    wall_time: float = 0.0       # seconds spent on it in this call


@dataclass
class StudyResult:
    spec: StudySpec
    store_path: Path
    outcomes: list[RunOutcome]
    wall_time: float

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


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plan_study(spec: StudySpec, store: RunStore) -> list[tuple[RunPlan, str, str | None]]:
    """``(plan, action, run_id)`` per run: ``new``, ``skipped`` or ``resume``, from the store."""
    out = []
    for plan in spec.runs():
        run = store.find_run(plan.key)
        if run is None:
            out.append((plan, "new", None))
        elif run["status"] in DONE:
            out.append((plan, "skipped", run["id"]))
        else:
            out.append((plan, "resume", run["id"]))
    return out


def _checkpoint_exists(store: RunStore, run_id: str) -> bool:
    # where the trainer keeps them (beside the store), or a registered artifact
    path = store.artifacts(run_id).get("checkpoint")
    return (Path(store.path).parent / "checkpoints" / f"{run_id}.pt").exists() or (
        path is not None and Path(path).exists())


def _record_failure(store: RunStore, plan: RunPlan, exc: BaseException) -> str:
    """Mark the run of ``plan`` failed (registering it first if the trainer never did)."""
    run = store.find_run(plan.key)
    run_id = run["id"] if run else store.create_run(plan.config, name=plan.policy, study=plan.study, key=plan.key)
    store.set_status(run_id, "failed", _one_line(exc))
    return run_id


def execute_run(plan: RunPlan, store_path: str, action: str, run_id: str | None,
                stop_event=None) -> dict[str, Any]:
    """Train one run of a study; never raises for a failed run (returns its outcome as a dict).

    Top-level, so a spawned worker can unpickle it.
    """
    from lipschitz_lab import trainer      # looked up at call time: tests count the calls
    store = RunStore(store_path)
    t0 = time.perf_counter()
    note, resume = None, None
    if action == "resume":
        # the trainer restarts a run without a checkpoint in place (same id, records dropped)
        resume = run_id
        if _checkpoint_exists(store, run_id):
            action = "resumed"
        else:
            action, note = "restarted", "no checkpoint to resume from: restarted from scratch"
    try:
        try:
            run = trainer.train(plan.config, store=store, run_key=plan.key, resume=resume,
                                stop_event=stop_event, progress=False)
        except Exception as exc:  # noqa: BLE001 -- any resume failure means: start over
            if resume is None:
                raise
            old = store.find_run(plan.key)
            if old is not None:
                store.delete_run(old["id"])
            action, note = "restarted", f"resume failed ({_one_line(exc, 200)}): restarted from scratch"
            run = trainer.train(plan.config, store=store, run_key=plan.key, stop_event=stop_event,
                                progress=False)
        run_id, status, reason = run.run_id, run.status, run.reason
    except Exception as exc:  # noqa: BLE001 -- a failed run is recorded, and the study goes on
        run_id, status, reason = _record_failure(store, plan, exc), "failed", _one_line(exc)
    finally:
        store.close()
    return {"action": action, "run_id": run_id, "status": status, "reason": reason, "note": note,
            "wall_time": time.perf_counter() - t0}


# -- worker processes ---------------------------------------------------------------------
_WORKER_STOP = None


def _init_worker(threads: int, stop) -> None:
    global _WORKER_STOP
    import torch
    torch.set_num_threads(threads)     # N workers share the cores instead of each taking all
    _WORKER_STOP = stop


def _execute_in_worker(plan: RunPlan, store_path: str, action: str, run_id: str | None) -> dict[str, Any]:
    return execute_run(plan, store_path, action, run_id, stop_event=_WORKER_STOP)


def run_study(spec: StudySpec, store: RunStore | str | os.PathLike | None = None, *, workers: int = 1,
              stop_event: threading.Event | None = None,
              on_start: Callable[[RunPlan], None] | None = None,
              on_outcome: Callable[[RunOutcome], None] | None = None) -> StudyResult:
    """Run every run of ``spec`` that the store does not hold finished; return the outcomes.

    ``workers=1`` trains in this process, one run after another; ``workers=N``
    uses N spawned processes (each with cores/N torch threads).  Setting
    ``stop_event`` stops the runs in flight at their next batch (status
    ``stopped``, resumable) and starts no more.  ``on_start``/``on_outcome``
    are called in the calling thread.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: must be an integer >= 1")
    store = open_store(store)
    t0 = time.perf_counter()
    plans = plan_study(spec, store)       # validates every config before anything trains
    outcomes: list[RunOutcome | None] = [None] * len(plans)
    todo = []
    for i, (plan, action, run_id) in enumerate(plans):
        if action == "skipped":
            run = store.get_run(run_id)
            outcomes[i] = RunOutcome(plan.policy, plan.seed, plan.key, "skipped", run_id, run["status"],
                                     run["reason"])
            if on_outcome:
                on_outcome(outcomes[i])
        else:
            todo.append(i)

    def finish(i: int, result: dict[str, Any]) -> None:
        plan = plans[i][0]
        outcomes[i] = RunOutcome(plan.policy, plan.seed, plan.key, **result)
        if on_outcome:
            on_outcome(outcomes[i])

    def stopped() -> bool:
        return stop_event is not None and stop_event.is_set()

    if workers == 1 or len(todo) <= 1:
        for i in todo:
            if stopped():
                break
            plan, action, run_id = plans[i]
            if on_start:
                on_start(plan)
            finish(i, execute_run(plan, str(store.path), action, run_id, stop_event=stop_event))
    else:
        _run_pool(plans, todo, store, workers, stop_event, on_start, finish)

    for i, (plan, action, run_id) in enumerate(plans):
        if outcomes[i] is None:
            outcomes[i] = RunOutcome(plan.policy, plan.seed, plan.key, "not started", run_id,
                                     note="the study was stopped first")
    return StudyResult(spec, store.path, outcomes, time.perf_counter() - t0)


def _run_pool(plans, todo, store, workers, stop_event, on_start, finish) -> None:
    ctx = multiprocessing.get_context("spawn")     # fork would copy torch's threads and the store's locks
    stop = ctx.Event()
    threads = max(1, (os.cpu_count() or 1) // workers)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(threads, stop)) as pool:
        futures = {}
        for i in todo:
            plan, action, run_id = plans[i]
            futures[pool.submit(_execute_in_worker, plan, str(store.path), action, run_id)] = i
        pending = set(futures)
        started: set = set()
        while pending:
            done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            if on_start:
                for fut in list(pending) + list(done):
                    if fut not in started and (fut.running() or fut.done()):
                        started.add(fut)
                        on_start(plans[futures[fut]][0])
            for fut in done:
                i = futures[fut]
                if fut.cancelled():
                    continue
                try:
                    finish(i, fut.result())
                except Exception as exc:  # noqa: BLE001 -- a dead worker: record the run failed
                    plan = plans[i][0]
                    finish(i, {"action": plans[i][1] if plans[i][1] != "resume" else "resumed",
                               "run_id": _record_failure(store, plan, exc), "status": "failed",
                               "reason": _one_line(exc), "note": "the worker process died"})
            if stop_event is not None and stop_event.is_set() and not stop.is_set():
                stop.set()
                for fut in pending:
                    fut.cancel()


def outcomes_frame(result: StudyResult):
    """The outcomes as a pandas DataFrame (one row per run of the study)."""
    import pandas as pd
    return pd.DataFrame([asdict(o) for o in result.outcomes])
