"""A local study worker: a spawned process that trains one run at a time and dies with its launcher.

The launcher (:class:`~lipschitz_lab.studies.local.PoolBackend`) starts each worker with
a pipe of its own and sends it one :class:`~lipschitz_lab.studies.backend.Job` at a time;
the worker trains it against a :class:`~lipschitz_lab.runs.leases.LeasedStore` (every write
checks the lease) and sends the outcome back.

A worker must never outlive its launcher: a launcher killed by a signal or the OOM killer
runs no clean-up, and its workers would go on training runs whose leases another launcher
takes over.  So each worker, first thing, starts a thread that waits on a *life pipe* whose
only writing end the launcher holds and never writes to: the kernel closes it when the
launcher dies, of whatever, and the thread SIGKILLs its worker.  (The worker's parent may be
the launcher's fork server, which lives as long as any worker does, so a parent-pid watch
would not do.)  On Linux the worker also asks for ``SIGKILL`` when its parent dies
(``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
from typing import Any

from lipschitz_lab.runs.leases import LeasedStore, LeaseLost, log
from lipschitz_lab.studies.backend import Job
from lipschitz_lab.studies.execute import execute_run, lost_note

__all__ = ["serve", "die_with_launcher"]

#: linux/prctl.h
PR_SET_PDEATHSIG = 1


def die_with_launcher(life) -> None:
    """SIGKILL this process as soon as ``life`` (the reading end of the launcher's life pipe) ends."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):   # no prctl in this libc: the life pipe alone
            pass
    threading.Thread(target=_watch, args=(life,), name="lipschitz-lab-life", daemon=True).start()


def _watch(life) -> None:
    try:
        life.poll(None)                     # the launcher never writes: this returns at its end
    except (OSError, EOFError):
        pass
    os.kill(os.getpid(), signal.SIGKILL)


class _Stop:
    """The study's stop, or this run's lost lease (one shared byte per run)."""

    def __init__(self, index: int, stop, flags):
        self.index, self.stop, self.flags = index, stop, flags

    def is_set(self) -> bool:
        return self.stop.is_set() or bool(self.flags[self.index])


def serve(conn, life, threads: int, stop, flags) -> None:
    """The worker process: ``(job, store path)`` in, :func:`execute_run`'s outcome out, until None."""
    die_with_launcher(life)
    import torch
    torch.set_num_threads(threads)          # N workers share the cores instead of each taking all
    while True:
        try:
            message = conn.recv()
        except EOFError:                    # the launcher closed the pipe: nothing more to do
            return
        if message is None:
            return
        job, path = message
        conn.send(_train(job, path, _Stop(job.index, stop, flags)))


def _train(job: Job, path: str, stop: _Stop) -> dict[str, Any]:
    store = LeasedStore(path, job.plan.key, job.owner)
    try:                                    # where it trains: a test (or a user) finds the pid here
        run = store.find_run(job.plan.key)
        log(store, "worker", run_id=run["id"] if run else None, key=job.plan.key, owner=job.owner,
            detail=f"host={socket.gethostname()} pid={os.getpid()} attempt={job.attempt}")
    except LeaseLost as exc:
        store.close()
        return {"action": job.action, "run_id": job.run_id, "status": None, "reason": None,
                "note": lost_note(exc), "wall_time": 0.0}
    return execute_run(job.plan, store, job.action, job.run_id, stop_event=stop)
