"""Train one run of a study against the store its backend hands it.

The store is a :class:`~lipschitz_lab.runs.leases.LeasedStore` where the run
trains beside the store (in this process or a worker process), and a
:class:`~lipschitz_lab.studies.remote_store.RemoteStore` on a Ray worker, which
forwards every write to the driver.  Either way this function sees one surface.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lipschitz_lab.runs import open_store
from lipschitz_lab.runs.leases import LeaseLost
from lipschitz_lab.studies.spec import RunPlan

__all__ = ["DONE", "done", "execute_run", "one_line", "lost_note", "checkpoint_exists", "record_failure"]

#: statuses that end a run for good: a re-run of the study skips them (a diverged run would
#: diverge again; a failed one keeps its error until the user asks for it again: ``retry_failed``)
DONE = ("finished", "diverged", "failed")


def done(run: dict | None, retry_failed: bool = False) -> bool:
    """Whether ``run`` (a store row, or None) is settled for good: no launcher trains it again."""
    if run is None:
        return False
    return run["status"] in DONE and not (retry_failed and run["status"] == "failed")


def one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def checkpoint_exists(store, run_id: str) -> bool:
    """Where the trainer keeps it (``store.checkpoint_path``), or a registered artifact."""
    if Path(store.checkpoint_path(run_id)).exists():
        return True
    artifacts = getattr(store, "artifacts", None)
    path = artifacts(run_id).get("checkpoint") if artifacts is not None else None
    return path is not None and Path(path).exists()


def record_failure(store, plan: RunPlan, exc: BaseException) -> str:
    """Mark the run of ``plan`` failed (registering it first if the trainer never did)."""
    run = store.find_run(plan.key)
    run_id = run["id"] if run else store.create_run(plan.config, name=plan.policy, study=plan.study, key=plan.key)
    store.set_status(run_id, "failed", one_line(exc))
    return run_id


def lost_note(exc: LeaseLost) -> str:
    return f"another launcher took the run over; stopped here ({one_line(exc, 200)})"


def _train(plan: RunPlan, store, resume: str | None, stop_event) -> Any:
    from lipschitz_lab import trainer      # looked up at call time: tests count the calls
    return trainer.train(plan.config, store=store, run_key=plan.key, resume=resume, stop_event=stop_event,
                         progress=False)


def execute_run(plan: RunPlan, store, action: str, run_id: str | None, stop_event=None) -> dict[str, Any]:
    """Train one run; never raises for a failed run (returns its outcome as a dict).

    ``action`` is ``new`` or ``resume`` (of ``run_id``).  A resume continues from the run's
    checkpoint; without one (stopped in its first epoch) the trainer restarts it in place, and
    the note says so.  A resume that raises leaves the run ``failed`` with the error: it is
    never trained again from scratch behind the user's back.  A lost lease ends the run here
    without another write: the launcher that took it over owns it now.  Top-level, so a
    spawned worker can unpickle it.
    """
    store = open_store(store)
    t0 = time.perf_counter()
    note, resume = None, None
    if action == "resume":
        # the trainer restarts a run without a checkpoint in place (same id, records dropped)
        resume = run_id
        if checkpoint_exists(store, run_id):
            action = "resumed"
        else:
            action, note = "restarted", "no checkpoint to resume from: restarted from scratch"
    try:
        run = _train(plan, store, resume, stop_event)
        run_id, status, reason = run.run_id, run.status, run.reason
    except LeaseLost as exc:
        status, reason, note = None, None, lost_note(exc)
    except Exception as exc:  # noqa: BLE001 -- a failed run is recorded, and the study goes on
        try:
            run_id, status, reason = record_failure(store, plan, exc), "failed", one_line(exc)
        except LeaseLost as lost:
            status, reason, note = None, None, lost_note(lost)
    finally:
        store.close()
    return {"action": action, "run_id": run_id, "status": status, "reason": reason, "note": note,
            "wall_time": time.perf_counter() - t0}
