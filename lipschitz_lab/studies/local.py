"""The local backends: runs train in this process, or in a pool of worker processes.

Each run writes the store beside it through a :class:`~lipschitz_lab.runs.leases.LeasedStore`,
so a write after its lease was taken over fails instead of landing.

The pool keeps one pipe per worker (:mod:`~lipschitz_lab.studies.worker`), so it knows which
run a worker held when it died: that run is sent again, to a fresh worker, from its newest
checkpoint, in the same launch (as the Ray backend does), up to ``max_attempts`` times in all;
then it is ``failed`` with the reason.  The other workers train on undisturbed.  Workers die
with their launcher, whatever it dies of.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from typing import Any

from lipschitz_lab.runs.leases import LeasedStore, LeaseLost, log
from lipschitz_lab.studies.backend import MAX_ATTEMPTS, Backend, Job, WorkerDied
from lipschitz_lab.studies.execute import execute_run, lost_note, one_line, record_failure
from lipschitz_lab.studies.worker import serve

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
class _Worker:
    """One worker process and the launcher's end of its pipe."""

    def __init__(self, ctx, args: tuple):
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(theirs, *args), name="lipschitz-lab-worker",
                                   daemon=True)
        self.process.start()
        theirs.close()
        self.job: Job | None = None

    def result(self) -> dict[str, Any] | None:
        """The outcome it sent, or None when it died first."""
        try:
            return self.conn.recv() if self.conn.poll() else None
        except (EOFError, OSError):
            return None


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


#: what the fork server imports once, so that each worker starts in milliseconds, not seconds
#: (scikit-learn: the default data sets, digits among them, load through it; ~2 s a worker)
PRELOAD = ("torch", "sklearn.datasets", "lipschitz_lab.trainer", "lipschitz_lab.studies.worker")


def _context():
    """A fork server where there is one (it has imported :data:`PRELOAD` and run nothing: no
    torch threads, no store connections to copy), else spawn.  A fork of the launcher itself
    would copy its threads and locks."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


class PoolBackend(Backend):
    """Train in up to ``workers`` worker processes, each with cores/N torch threads."""

    max_attempts = MAX_ATTEMPTS     # per run, when its worker dies under it

    def __init__(self, path, workers: int, n_runs: int, stop_event=None, max_attempts: int | None = None):
        self.path, self.capacity, self.stop_event = path, workers, stop_event
        self.max_attempts = max_attempts or self.max_attempts
        self._ctx = _context()
        self._stop, self._flags = self._ctx.Event(), self._ctx.RawArray("b", max(n_runs, 1))
        threads = max(1, (os.cpu_count() or 1) // workers)
        # the life pipe: only this process holds its writing end; a worker dies when it closes
        life, self._life = self._ctx.Pipe(duplex=False)
        self._args = (life, threads, self._stop, self._flags)
        self._workers: list[_Worker] = []

    def submit(self, job: Job) -> None:
        message = (job, str(self.path))
        for worker in [w for w in self._workers if w.job is None]:
            try:
                if worker.process.is_alive():
                    worker.conn.send(message)
                    worker.job = job
                    return
            except OSError:                           # it died while idle: not this run's attempt
                pass
            self._workers.remove(worker)
            worker.process.join()
            worker.conn.close()
        worker = _Worker(self._ctx, self._args)
        self._workers.append(worker)
        worker.job = job
        try:
            worker.conn.send(message)
        except OSError:                               # it died at once: poll() sees its sentinel
            pass

    def poll(self, timeout: float) -> list[tuple[Job, dict[str, Any]]]:
        if self.stop_event is not None and self.stop_event.is_set():
            self._stop.set()
        busy = [w for w in self._workers if w.job is not None]
        if not busy:
            return []
        ready = set(multiprocessing.connection.wait(
            [w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
        out = []
        for worker in busy:
            if worker.conn not in ready and worker.process.sentinel not in ready:
                continue
            job, result = worker.job, worker.result()
            worker.job = None
            if result is None:                        # it died under the run: send the run again
                self._workers.remove(worker)
                worker.process.join()
                result = self._died(job, _death(worker.process.exitcode))
            if result is not None:
                if job.attempt > 1:
                    result["note"] = "; ".join(n for n in (job.note, result.get("note")) if n)
                out.append((job, {**result, "attempts": job.attempt}))
        return out

    def _died(self, job: Job, why: str) -> dict[str, Any] | None:
        """Resubmit ``job`` from its checkpoint (None), or its outcome after the last attempt."""
        result = {"action": "resumed" if job.action == "resume" else job.action, "run_id": job.run_id,
                  "status": None, "reason": None, "note": f"the worker process died ({why})",
                  "wall_time": 0.0}
        store = LeasedStore(self.path, job.plan.key, job.owner)
        try:
            run = store.find_run(job.plan.key)
            if self._stop.is_set():                   # the study is stopping: a later launch resumes it
                return result
            if job.attempt < self.max_attempts:
                note = f"attempt {job.attempt + 1} after the worker process died ({why})"
                log(store, "retry", run_id=run["id"] if run else None, key=job.plan.key, owner=job.owner,
                    detail=note)
                self.submit(dataclasses.replace(job, attempt=job.attempt + 1, note=note,
                                                action="resume" if run else "new",
                                                run_id=run["id"] if run else None))
                return None
            exc = WorkerDied(f"the worker process died ({why}) on attempt {job.attempt} "
                             f"of {self.max_attempts}")
            result.update(run_id=record_failure(store, job.plan, exc), status="failed", reason=one_line(exc))
        except LeaseLost as lost:
            result["note"] = lost_note(lost)
        finally:
            store.close()
        return result

    def cancel(self, job: Job) -> None:
        self._flags[job.index] = 1

    def close(self) -> None:
        """Idle workers are told to exit; one still training (the launcher failed) is killed."""
        for worker in self._workers:
            try:
                if worker.job is None:
                    worker.conn.send(None)
                else:
                    worker.process.kill()
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []
        self._life.close()
