"""What the curvature instruments say about each policy of a study (``sharpness_every``): the numbers
that explain a rank (issue 23).

Per run, over its measured steps: the median ``edge`` = lr·λ_max, the share of measured steps above
the run's ``edge_limit`` (2, or 2(1+μ) with heavy ball: the step is unstable along the top
eigenvector), and λ_max at the first and the last measurement.  Per policy: the medians over seeds.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from lipschitz_lab.runs import RunStore

__all__ = ["run_instruments", "instrument_table", "instruments_text"]


def run_instruments(records: list[dict[str, Any]]) -> dict[str, float] | None:
    """One run's instruments from its step records; None when nothing was measured."""
    measured = [r for r in records if r.get("kind") == "step" and r.get("lambda_max") is not None]
    if not measured:
        return None
    edges = [r["edge"] for r in measured if r.get("edge") is not None and math.isfinite(r["edge"])]
    above = [r["edge"] > r["edge_limit"] for r in measured if r.get("edge") is not None and r.get("edge_limit")]
    return {"edge_median": statistics.median(edges) if edges else math.nan,
            "edge_above": sum(above) / len(above) if above else math.nan,
            "lambda_first": measured[0]["lambda_max"], "lambda_last": measured[-1]["lambda_max"],
            "measured": len(measured)}


def instrument_table(store: RunStore, runs) -> pd.DataFrame:
    """One row per policy (in ``runs``' order) with the medians over its seeds' instruments."""
    per_run = []
    for run in runs:
        got = run_instruments(store.records(run.run_id, "step"))
        if got is not None:
            per_run.append({"policy": run.policy, **got})
    frame = pd.DataFrame(per_run)
    if not len(frame):
        return frame
    order = list(dict.fromkeys(r.policy for r in runs))
    rows = [{"policy": p, **frame[frame.policy == p].drop(columns="policy").median().to_dict()}
            for p in order if (frame.policy == p).any()]
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
