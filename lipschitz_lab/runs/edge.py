"""How often a run's rate crossed the edge of stability, from its records alone (issue 23).

>>> edge_line(store.records(run_id, "step"))                                 # doctest: +SKIP
'edge: above 2 on 3 of 8 measured steps (first at step 40); median lr·λ_max 1.4'

A run with ``sharpness_every=N`` carries, on every N-th step record, ``lambda_max`` (the top
eigenvalue of the batch loss's Hessian) and ``edge`` = lr·λ_max with the rate that step's update
used, and on every step ``edge_limit``: 2 for gradient descent, 2(1+μ) with heavy-ball momentum
(docs/curvature.md).  A step whose edge is above its limit is unstable along the top
eigenvector.  :class:`EdgeCount` is the one place that counts them: the live panel's status line
(fed batch by batch through :class:`~lipschitz_lab.runs.verdict.Tally`), the report's header, the
CLI and the study tables (:mod:`lipschitz_lab.studies.instruments`) all read it.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

Record = dict[str, Any]

__all__ = ["EdgeCount", "edge_line"]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class EdgeCount:
    """The measured steps of a run, fed in order (``add``): how many, how many above the edge limit,
    the first of those, λ_max at the first and the last measurement, and every edge (for the median)."""

    def __init__(self, records: Iterable[Record] = ()):
        self.measured = 0                 # step records with a lambda_max
        self.judged = 0                   # ... with a finite edge and an edge_limit
        self.above = 0                    # ... whose edge is above the limit
        self.first_above: int | None = None
        self.limit: float | None = None   # the last step's edge_limit (it does not change within a run)
        self.edges: list[float] = []
        self.lambda_first: float | None = None
        self.lambda_last: float | None = None
        self.add(records)

    def add(self, records: Iterable[Record]) -> "EdgeCount":
        for r in records:
            if r.get("kind", "step") == "step":
                self.add_step(r)
        return self

    def add_step(self, r: Record) -> None:
        """One step record (the caller knows its kind)."""
        limit = r.get("edge_limit")
        if _finite(limit):
            self.limit = float(limit)
        lam = r.get("lambda_max")
        if lam is None:
            return
        self.measured += 1
        self.lambda_first = lam if self.lambda_first is None else self.lambda_first
        self.lambda_last = lam
        edge = r.get("edge")
        if not _finite(edge):
            return
        self.edges.append(float(edge))
        if _finite(limit):
            self.judged += 1
            if edge > limit:
                self.above += 1
                self.first_above = r.get("step") if self.first_above is None else self.first_above

    @property
    def share_above(self) -> float:
        """The share of the judged steps above the limit (NaN: none judged)."""
        return self.above / self.judged if self.judged else math.nan

    @property
    def median(self) -> float:
        """The median edge over the measured steps (NaN: none)."""
        return statistics.median(self.edges) if self.edges else math.nan

    def text(self) -> str:
        """One line: ``edge: above 2 on 3 of 8 measured steps (first at step 40); median lr·λ_max 1.4``;
        empty when nothing was measured."""
        if not self.judged:
            return f"edge: {self.measured} measured steps, no edge yet" if self.measured else ""
        limit = f"{self.limit:.3g}"
        if self.above:
            said = (f"above {limit} on {self.above} of {self.judged} measured steps "
                    f"(first at step {self.first_above})")
        else:
            said = f"below {limit} on all {self.judged} measured steps"
        return f"edge: {said}; median lr·λ_max {self.median:.3g}"


def edge_line(records: Iterable[Record]) -> str:
    """:meth:`EdgeCount.text` of a run's records ('' for a run that measured no curvature)."""
    return EdgeCount(records).text()
