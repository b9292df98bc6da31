"""What the curvature instruments say about each policy of a study (``sharpness_every``): the numbers
that explain a rank (issue 23).

Per run, over its measured steps: the median ``edge`` = lr·λ_max, the share of measured steps above
the run's ``edge_limit`` (2, or 2(1+μ) with heavy ball: the step is unstable along the top
eigenvector), and λ_max at the first and the last measurement.  Per policy: the medians over seeds.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from lipschitz_lab.runs import RunStore
from lipschitz_lab.runs.edge import EdgeCount

__all__ = ["run_instruments", "instrument_table", "policy_instruments", "instruments_text"]


def run_instruments(records: list[dict[str, Any]]) -> dict[str, float] | None:
    """One run's instruments from its step records (counted by :class:`~lipschitz_lab.runs.edge.EdgeCount`,
    as the status line and the report count them); None when nothing was measured."""
    count = EdgeCount(records)
    if not count.measured:
        return None
    return {"edge_median": count.median, "edge_above": count.share_above,
            "lambda_first": count.lambda_first, "lambda_last": count.lambda_last, "measured": count.measured}


def instrument_table(store: RunStore, runs) -> pd.DataFrame:
    """One row per policy (in ``runs``' order) with the medians over its seeds' instruments; empty when
    no run measured any."""
    per_run = [{"policy": run.policy, **got} for run in runs
               if (got := run_instruments(store.records(run.run_id, "step"))) is not None]
    return policy_instruments(per_run, [r.policy for r in runs])


def policy_instruments(per_run: list[dict[str, Any]], order: list[str]) -> pd.DataFrame:
    """Rows of ``policy`` and :func:`run_instruments`' fields, one per run, as one row per policy (the
    medians over its seeds), in ``order``."""
    frame = pd.DataFrame(per_run)
    if not len(frame):
        return frame
    rows = [{"policy": p, **frame[frame.policy == p].drop(columns="policy").median().to_dict()}
            for p in dict.fromkeys(order) if (frame.policy == p).any()]
    return pd.DataFrame(rows)


def _g(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"


def instruments_text(table: pd.DataFrame, ranks: dict[str, int] | None = None) -> str:
    """The instruments as Markdown, in rank order when ``ranks`` (policy -> rank) is given."""
    head = ["rank", "policy", "median edge (lr·λ_max)", "measured steps above the edge", "λ_max first",
            "λ_max last", "measured steps"]
    rows = table.to_dict("records")
    if ranks:
        rows.sort(key=lambda r: (ranks.get(r["policy"], 10**6), r["policy"]))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        share = "–" if not math.isfinite(r["edge_above"]) else f"{100 * r['edge_above']:.0f} %"
        lines.append(f"| {ranks.get(r['policy'], '–') if ranks else '–'} | `{r['policy']}` | {_g(r['edge_median'])} "
                     f"| {share} | {_g(r['lambda_first'])} | {_g(r['lambda_last'])} | {int(r['measured'])} |")
    return "\n".join(lines)
