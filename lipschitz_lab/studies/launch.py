"""One launcher's pass over a study: claim a run, hand it to the backend, settle its outcome.

The loop keeps at most ``backend.capacity`` runs claimed and in flight.  A run whose
lease a live launcher holds is *held*: it is looked at again every ``LOOK_S`` seconds
and settles when its owner finishes it; when that owner's heartbeat has stopped, it
goes back to the queue, and the next claim takes it over.  Nothing here knows where a
run trains.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from lipschitz_lab.runs import RunStore
from lipschitz_lab.runs.leases import Heartbeat, Lease, claim, leases, release
from lipschitz_lab.studies.backend import Backend, Job
from lipschitz_lab.studies.execute import done
from lipschitz_lab.studies.spec import RunPlan

__all__ = ["RunOutcome", "Launch"]

#: seconds a poll of the backend waits for a run to end
POLL_S = 0.25
#: seconds between looks at the runs other launchers hold
LOOK_S = 0.5


@dataclass
class RunOutcome:
    """What happened to one run of a study in this call."""

    policy: str
    seed: int
    key: str
    action: str                  # "new" | "resumed" | "restarted" | "skipped" | "held" | "not started"
    run_id: str | None = None
    status: str | None = None    # the store's status after the call
    reason: str | None = None
    note: str | None = None      # e.g. why a resume became a restart, who trained a held run
    wall_time: float = 0.0       # seconds spent on it in this call
    attempts: int = 1            # > 1: its worker died and it was sent again (pool or Ray)


class Launch:
    """Settles every run of ``plans`` once: ``outcomes[i]`` is ``plans[i]``'s."""

    def __init__(self, plans: list[RunPlan], store: RunStore, owner: str, ttl: float, *, wait: bool = True,
                 stop_event=None, on_start: Callable[[RunPlan], None] | None = None,
                 on_outcome: Callable[[RunOutcome], None] | None = None, retry_failed: bool = False):
        self.plans, self.store, self.owner, self.ttl, self.wait = plans, store, owner, ttl, wait
        self.retry_failed = retry_failed
        self._retry: dict[str, tuple] = {}      # key -> the failed row this launch was asked to retry
        self.stop_event, self.on_start, self.on_outcome = stop_event, on_start, on_outcome
        self.outcomes: list[RunOutcome | None] = [None] * len(plans)
        self.todo: list[int] = []               # not claimed yet
        self.held: dict[int, Lease] = {}        # a live launcher trains them
        self.mine: dict[int, Job] = {}          # claimed by this launcher, in flight
        self._by_key: dict[str, Job] = {}       # read by the heartbeat thread
        self._takeover: dict[int, str] = {}
        self.backend: Backend | None = None

    def skip_done(self) -> None:
        """Settle the runs the store holds finished, diverged or failed (unless ``retry_failed``);
        queue the rest."""
        for i, plan in enumerate(self.plans):
            run = self.store.find_run(plan.key)
            if done(run, self.retry_failed):
                self._settle(i, "skipped", run)
                continue
            if run is not None and run["status"] == "failed":
                self._retry[plan.key] = _failure(run)
            self.todo.append(i)

    def _settled(self, key: str, run: dict | None) -> bool:
        """Read under the lease: is ``run`` done for good?  A failure this launch was asked to retry
        is not, unless it is a newer one (another launcher retried it meanwhile)."""
        if run is not None and run["status"] == "failed" and self._retry.get(key) == _failure(run):
            return False
        return done(run)

    def run(self, backend: Backend, heartbeat: Heartbeat) -> None:
        self.backend, self.heartbeat = backend, heartbeat
        next_look = 0.0
        while True:
            stopping = self.stop_event is not None and self.stop_event.is_set()
            if not stopping:
                self._dispatch()
            if not self.mine and (stopping or not self.todo) and (stopping or not self.wait or not self.held):
                break
            if self.mine:
                for job, result in backend.poll(POLL_S):
                    self._finish(job, result)
            else:                               # only other launchers' runs are left
                time.sleep(LOOK_S)
            if self.held and time.monotonic() >= next_look:
                self._look_at_held()
                next_look = time.monotonic() + LOOK_S
        self._settle_rest()

    def lost(self, key: str) -> None:
        """The heartbeat found ``key``'s lease taken over: stop that run (heartbeat thread)."""
        job = self._by_key.get(key)
        if job is not None and self.backend is not None:
            self.backend.cancel(job)

    def release_all(self) -> None:
        """Give back the leases still held (after an error: the runs are resumable at once)."""
        for job in list(self.mine.values()):
            release(self.store, job.plan.key, self.owner)

    # -- the steps ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self.todo and len(self.mine) < self.backend.capacity:
            i = self.todo.pop(0)
            plan = self.plans[i]
            got = claim(self.store, plan.key, self.owner, self.ttl)
            if not got.granted:
                self.held[i] = got.previous
                continue
            run = self.store.find_run(plan.key)     # read under the lease: nobody else changes it now
            if self._settled(plan.key, run):
                release(self.store, plan.key, self.owner)
                self._settle(i, "skipped", run)
                continue
            if got.previous is not None:
                self._takeover[i] = (f"took over from {got.previous.owner} "
                                     f"(silent for {got.previous.age():.0f}s)")
            job = Job(i, plan, "new" if run is None else "resume", run["id"] if run else None, self.owner)
            self.heartbeat.add(plan.key)
            self.mine[i], self._by_key[plan.key] = job, job
            if self.on_start:
                self.on_start(plan)
            self.backend.submit(job)

    def _finish(self, job: Job, result: dict) -> None:
        key = job.plan.key
        self.heartbeat.discard(key)
        self.mine.pop(job.index, None)
        self._by_key.pop(key, None)
        release(self.store, key, self.owner)
        status, run_id = result["status"], result["run_id"]
        if status is None:                  # it lost its lease: say what the store says now
            run = self.store.find_run(key)
            status, run_id = (run["status"], run["id"]) if run else (None, run_id)
        note = "; ".join(n for n in (self._takeover.get(job.index), result.get("note")) if n) or None
        self._record(job.index, result["action"], run_id=run_id, status=status, reason=result["reason"],
                     note=note, wall_time=result["wall_time"], attempts=result.get("attempts", 1))

    def _look_at_held(self) -> None:
        live = leases(self.store, prefix=f"{self.plans[0].study}/")
        for i in list(self.held):
            plan = self.plans[i]
            run = self.store.find_run(plan.key)
            if done(run):
                owner = self.held.pop(i).owner
                self._settle(i, "held", run, note=f"trained by {owner}")
                continue
            lease = live.get(plan.key)
            if lease is None or not lease.live():     # released, or its launcher died: claim it
                del self.held[i]
                self.todo.insert(0, i)
            else:
                self.held[i] = lease

    def _settle_rest(self) -> None:
        for i, lease in self.held.items():
            run = self.store.find_run(self.plans[i].key)
            self._settle(i, "held", run, note=f"held by {lease.owner} (heartbeat {lease.age():.0f}s ago)")
        for i in self.todo:
            self._settle(i, "not started", None, note="the study was stopped first")
        self.held, self.todo = {}, []

    def _settle(self, i: int, action: str, run: dict | None, note: str | None = None) -> None:
        self._record(i, action, run_id=run["id"] if run else None, status=run["status"] if run else None,
                     reason=run["reason"] if run else None, note=note)

    def _record(self, i: int, action: str, **fields) -> None:
        plan = self.plans[i]
        self.outcomes[i] = RunOutcome(plan.policy, plan.seed, plan.key, action, **fields)
        if self.on_outcome:
            self.on_outcome(self.outcomes[i])


def _failure(run: dict) -> tuple:
    """What identifies one failure of a run: a retried run that fails again is a new one."""
    return run["id"], run["reason"], run["updated"]
