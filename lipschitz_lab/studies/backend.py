"""Where a study's runs train: the one small interface every backend implements.

The launcher (:mod:`~lipschitz_lab.studies.launch`) claims a run's lease, hands the
run to a backend as a :class:`Job`, and polls the backend for its result.  The
backends: :mod:`~lipschitz_lab.studies.local` (this process, or a pool of processes
on this machine) and :mod:`~lipschitz_lab.studies.ray_backend` (one Ray task per run,
across a cluster); :mod:`~lipschitz_lab.studies.backends` picks one by name.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from lipschitz_lab.studies.spec import RunPlan

__all__ = ["BACKENDS", "MAX_ATTEMPTS", "Job", "Backend", "BackendUnavailable", "WorkerDied"]

BACKENDS = ("local", "ray")

#: attempts per run when its worker process (or node) dies, the first one included; then it is failed
MAX_ATTEMPTS = 3


class BackendUnavailable(ValueError, ImportError):
    """The backend's optional package is missing (a ValueError, so the CLI prints one line)."""


class WorkerDied(RuntimeError):
    """A run's worker process died under it (a signal, the OOM killer) on its last attempt."""


@dataclass
class Job:
    """One claimed run, handed to a backend."""

    index: int                 # the run's place in the study's plan
    plan: RunPlan
    action: str                # "new" | "resume"
    run_id: str | None
    owner: str                 # the launcher that holds the run's lease
    attempt: int = 1           # > 1: sent again after its worker died
    note: str | None = None    # e.g. "took over from <owner>"


class Backend(ABC):
    name = "local"
    capacity = 1               # runs in flight at once; the launcher claims no more than this
    startup_s = 0.0            # seconds spent starting or connecting to the backend

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Start training ``job``'s run."""

    @abstractmethod
    def poll(self, timeout: float) -> list[tuple[Job, dict[str, Any]]]:
        """The jobs that ended, with :func:`execute_run`'s result; waits up to ``timeout`` s for one."""

    def cancel(self, job: Job) -> None:
        """``job``'s lease is lost: stop it after its batch (called from the heartbeat thread)."""

    def close(self) -> None:
        """Give back what the backend holds (after every job has ended)."""
