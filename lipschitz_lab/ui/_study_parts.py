"""Parts of the study panel: the policies it opens with, its policy list, its lines of text."""
from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import pandas as pd

from lipschitz_lab.studies.spec import select

#: the policies selected when the panel opens: the default rule (the Live tab's: strict, per step),
#: the paper's rate (its verdict says why it fails) and three baselines
DEFAULT_SELECTION = ("lipschitz-strict-step-sgd", "lipschitz-paper-epoch-sgd", "constant-0.1",
                     "onecycle-0.1", "prodigy")


def backends() -> tuple[str, ...]:
    from lipschitz_lab.studies.backends import BACKENDS
    return BACKENDS


def hint() -> widgets.HTML:
    """Says what a plain click does not: several policies are chosen with ctrl or shift."""
    return widgets.HTML("<i>ctrl- or shift-click to choose several policies</i>")


def policy_selector(catalogue: dict, policies) -> widgets.SelectMultiple:
    """The policy list, the chosen ones first: all of them in view when the panel opens."""
    chosen = [p.name for p in select(list(policies))]
    w = widgets.SelectMultiple(options=chosen + [n for n in catalogue if n not in chosen],
                               rows=14, description="policies", value=tuple(chosen))
    w.layout.width = "420px"
    return w


def lines(ready: str) -> tuple[widgets.HTML, widgets.HTML, widgets.HTML]:
    """The status line (``ready`` until a study starts), the progress line and the results."""
    out = tuple(widgets.HTML(value=v) for v in (ready, "", ""))
    for w, name in zip(out, ("status", "progress", "study-results")):
        w.add_class(f"lipschitz-{name}")
    return out


def results_html(table: pd.DataFrame) -> str:
    """Rank, policy, final accuracy and verdict per policy: which runs learned and which did not; for a
    study that measured curvature, its instruments too (the median edge lr·λ_max, the share of measured
    steps above the edge, λ_max first and last: studies/instruments.py)."""
    if not len(table):
        return ""
    from lipschitz_lab.studies.summary import INSTRUMENT_COLUMNS, acc_col, has_instruments, instrument_cells
    acc, instruments = acc_col(table), has_instruments(table)
    extra = "".join(f"<th>{html.escape(h)}</th>" for h in INSTRUMENT_COLUMNS.values()) if instruments else ""
    rows = "".join(f"<tr><td>{r['rank']}</td><td>{html.escape(r.policy)}</td>"
                   f"<td>{'–' if not np.isfinite(r[acc]) else format(r[acc], '.3f')}</td>"
                   f"<td>{html.escape(r.verdict)}</td>"
                   + ("".join(f"<td>{html.escape(c)}</td>" for c in instrument_cells(r)) if instruments else "")
                   + "</tr>" for _, r in table.sort_values("rank").iterrows())
    return ("<table style='font-size:90%'><tr><th>rank</th><th>policy</th><th>final acc</th><th>verdict</th>"
            f"{extra}</tr>{rows}</table>")
