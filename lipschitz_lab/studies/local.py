"""The local backends: runs train in this process, or in a pool of spawned processes.

Each run writes the store beside it through a :class:`~lipschitz_lab.runs.leases.LeasedStore`,
so a write after its lease was taken over fails instead of landing.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from lipschitz_lab.runs.leases import LeasedStore, LeaseLost
from lipschitz_lab.studies.backend import Backend, Job
from lipschitz_lab.studies.execute import execute_run, lost_note, one_line, record_failure
from lipschitz_lab.studies.spec import RunPlan

__all__ = ["InlineBackend", "PoolBackend"]


class _Either:
    """A stop event set when any of its events is (the trainer only calls ``is_set``)."""

    def __init__(self, *events):
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


class InlineBackend(Backend):
    """Train in the calling thread: :meth:`poll` trains the next submitted run to its end."""

    def __init__(self, path, stop_event=None):
        self.path, self.stop_event = path, stop_event
        self._queue: list[Job] = []
        self._lost: dict[int, threading.Event] = {}

    def submit(self, job: Job) -> None:
        self._lost[job.index] = threading.Event()
        self._queue.append(job)

    def poll(self, timeout: float) -> list[tuple[Job, dict[str, Any]]]:
        if not self._queue:
            return []
        job = self._queue.pop(0)
        store = LeasedStore(self.path, job.plan.key, job.owner)
        stop = _Either(self.stop_event, self._lost[job.index])
        return [(job, execute_run(job.plan, store, job.action, job.run_id, stop_event=stop))]

    def cancel(self, job: Job) -> None:
        self._lost[job.index].set()


# -- worker processes ---------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, stop, flags) -> None:
    import torch
    torch.set_num_threads(threads)     # N workers share the cores instead of each taking all
    _WORKER.update(stop=stop, flags=flags)


class _WorkerStop:
    """In a worker: the study's stop, or this run's lost lease (one shared byte per run)."""

    def __init__(self, index: int):
        self.index = index

    def is_set(self) -> bool:
        return _WORKER["stop"].is_set() or bool(_WORKER["flags"][self.index])


def _execute_in_worker(index: int, plan: RunPlan, action: str, run_id: str | None, path: str,
                       owner: str) -> dict[str, Any]:
    store = LeasedStore(path, plan.key, owner)
    return execute_run(plan, store, action, run_id, stop_event=_WorkerStop(index))


class PoolBackend(Backend):
    """Train in ``workers`` spawned processes, each with cores/N torch threads."""

    def __init__(self, path, workers: int, n_runs: int, stop_event=None):
        self.path, self.capacity, self.stop_event = path, workers, stop_event
        ctx = multiprocessing.get_context("spawn")    # fork would copy torch's threads and the store's locks
        self._stop, self._flags = ctx.Event(), ctx.RawArray("b", max(n_runs, 1))
        threads = max(1, (os.cpu_count() or 1) // workers)
        self._make = lambda: cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                                     initargs=(threads, self._stop, self._flags))
        self._pool = self._make()
        self._futures: dict[cf.Future, Job] = {}

    def submit(self, job: Job) -> None:
        args = (job.index, job.plan, job.action, job.run_id, str(self.path), job.owner)
        try:
            fut = self._pool.submit(_execute_in_worker, *args)
        except BrokenProcessPool:                     # a worker died earlier: a fresh pool for the rest
            self._pool.shutdown(wait=False)
            self._pool = self._make()
            fut = self._pool.submit(_execute_in_worker, *args)
        self._futures[fut] = job

    def poll(self, timeout: float) -> list[tuple[Job, dict[str, Any]]]:
        if self.stop_event is not None and self.stop_event.is_set():
            self._stop.set()
        if not self._futures:
            return []
        done, _ = cf.wait(list(self._futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in done:
            job = self._futures.pop(fut)
            try:
                out.append((job, fut.result()))
            except Exception as exc:  # noqa: BLE001 -- a dead worker: record the run failed
                out.append((job, self._died(job, exc)))
        return out

    def _died(self, job: Job, exc: BaseException) -> dict[str, Any]:
        result = {"action": "resumed" if job.action == "resume" else job.action, "run_id": job.run_id,
                  "status": None, "reason": None, "note": "the worker process died", "wall_time": 0.0}
        try:
            store = LeasedStore(self.path, job.plan.key, job.owner)
            result.update(run_id=record_failure(store, job.plan, exc), status="failed", reason=one_line(exc))
        except LeaseLost as lost:
            result["note"] = lost_note(lost)
        return result

    def cancel(self, job: Job) -> None:
        self._flags[job.index] = 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
