"""How far a study has got, read from the store alone: whichever backend trains it,
whichever launcher (or launchers) runs it, a poll gives the same answer.

``progress(store, spec)`` counts the runs of the spec's plan by the store's status,
tells live runs (a launcher holds their lease) from stale ones (``running`` in the
store, but no launcher beats for them: the next launch takes them over), and
estimates the time left from the runs' own epoch records.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from lipschitz_lab.runs import RunStore, open_store
from lipschitz_lab.runs.leases import leases
from lipschitz_lab.studies.execute import DONE
from lipschitz_lab.studies.spec import StudySpec

__all__ = ["StudyProgress", "progress", "format_seconds"]


@dataclass(frozen=True)
class StudyProgress:
    """A study's state in the store.  ``done`` counts finished and diverged runs (a re-run skips them)."""

    total: int                      # runs in the plan
    done: int                       # finished or diverged
    running: int                    # held by a live launcher
    stale: int                      # "running" in the store with no live launcher: the next launch resumes them
    pending: int                    # no run in the store yet
    by_status: dict[str, int] = field(default_factory=dict)   # store status per run, "pending" for none
    owners: dict[str, int] = field(default_factory=dict)      # live launcher id -> runs it holds
    epochs_done: int = 0            # epoch records of the plan's runs
    epochs_total: int = 0           # epochs the plan asks for (max_steps may end runs sooner)
    eta_s: float | None = None      # seconds left, estimated; None before anything can be timed

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def finished(self) -> bool:
        return self.done == self.total

    def line(self) -> str:
        """E.g. ``12/40 runs done, 3 running, ETA 2m10s``."""
        parts = [f"{self.done}/{self.total} runs done"]
        if self.running:
            parts.append(f"{self.running} running")
        if self.stale:
            parts.append(f"{self.stale} stale")
        if self.eta_s is not None and not self.finished:
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        return ", ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _expected_epochs(config: dict, epochs: list[dict]) -> int:
    """The epochs the run will record: ``epochs``, fewer when ``max_steps`` ends it sooner."""
    n = int(config.get("epochs", 1))
    max_steps = config.get("max_steps")
    if max_steps and epochs and epochs[0].get("step"):
        n = min(n, math.ceil(max_steps / epochs[0]["step"]))   # an epoch record's step: steps so far
    return max(n, 1)


def progress(store: RunStore | str | None, spec: StudySpec) -> StudyProgress:
    """The state of ``spec``'s runs in ``store`` (a path or a RunStore), cheap enough to poll."""
    store = open_store(store)
    now = time.time()
    held = {k: lease for k, lease in leases(store, prefix=f"{spec.name}/").items() if lease.live(now)}
    runs = {r["key"]: r for r in store.list_runs(study=spec.name)}
    by_status, owners = Counter(), Counter()
    durations, rates, in_flight = [], [], 0.0      # rates: seconds per unit of run, from partial runs
    done = running = stale = epochs_done = epochs_total = 0
    plans = spec.runs()
    for plan in plans:
        run = runs.get(plan.key)
        lease = held.get(plan.key)
        if lease is not None:
            owners[lease.owner] += 1
        epochs = store.records(run["id"], "epoch") if run else []
        expected = _expected_epochs(plan.config, epochs)
        epochs_total += expected
        epochs_done += min(len(epochs), expected)
        if run is None:
            by_status["pending"] += 1
            running += lease is not None
            continue
        by_status[run["status"]] += 1
        elapsed = epochs[-1].get("time") if epochs else None
        if run["status"] in DONE:
            done += 1
            if elapsed:
                durations.append(elapsed)
        elif lease is not None:
            running += 1
            share = min(len(epochs) / expected, 0.99)
            in_flight += share
            if elapsed and share > 0:
                rates.append(elapsed / share)
        elif run["status"] == "running":
            stale += 1
    per_run = sum(durations) / len(durations) if durations else (sum(rates) / len(rates) if rates else None)
    left = (len(plans) - done) - in_flight
    eta = None if per_run is None else max(left, 0.0) * per_run / max(running, 1)
    return StudyProgress(len(plans), done, running, stale, by_status.get("pending", 0), dict(by_status),
                         dict(owners), epochs_done, epochs_total, eta)
