"""A run as one self-contained HTML file: BokehJS inline, no CDN, opens offline.

>>> write_report("runs/lipschitz_lab.db", "r-20261128-103001-ab12")   # doctest: +SKIP
PosixPath('runs/reports/r-20261128-103001-ab12.html')
"""
from __future__ import annotations

import html
import os
from pathlib import Path

from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import Div
from bokeh.resources import INLINE

from lipschitz_lab.runs import RunStore, open_store
from lipschitz_lab.runs.edge import edge_line
from lipschitz_lab.runs.verdict import verdict
from lipschitz_lab.ui.figures import RunFigures, has_lipschitz_fields, number

#: figures a row, and each figure's height: the report fills the page's width (stretch_width)
REPORT_COLUMNS = 2
REPORT_HEIGHT = 320

#: config fields shown in the report's header, in this order
HEADER_FIELDS = ("dataset", "model", "loss", "lr_policy", "optimizer", "bound", "kz", "recompute",
                 "batch_size", "epochs", "weight_decay", "min_lr", "max_lr", "lr_scale", "seed", "device")


def as_store(store: RunStore | str | os.PathLike | None = None) -> RunStore:
    """``store``; a path opens one; None: ``$LIPSCHITZ_LAB_STORE``, else ``runs/lipschitz_lab.db``
    (the trainer's rule)."""
    return open_store(store)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _edge(line: str) -> str:
    """The stability line (runs/edge.py) and what its figure shows; nothing for a run that measured
    no curvature."""
    if not line:
        return ""
    return (f"<p class='lipschitz-edge'>{html.escape(line)} <i>(lr·λ_max above 2 is unstable along the "
            "Hessian's top eigenvector; 2(1+μ) with heavy-ball momentum: see the edge-of-stability "
            "figure)</i></p>")


def _header(run: dict, epochs: list[dict], lipschitz: bool, said, edge: str = "") -> Div:
    cfg = run["config"]
    title = html.escape(run["name"] or run["id"])
    rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td>{_fmt(cfg[k])}</td></tr>"
                   for k in HEADER_FIELDS if k in cfg)
    last = epochs[-1] if epochs else {}
    final = ", ".join(f"{k} {number(last.get(k)):.4f}" for k in ("val_acc", "test_acc", "train_acc")
                      if last.get(k) is not None)
    reason = f" ({html.escape(str(run['reason']))})" if run.get("reason") else ""
    note = "" if lipschitz else (
        "<p><i>This run's policy is not a Lipschitz one: its records carry no K_z, L or gradient "
        "maxima, so those figures are left out.</i></p>")
    text = (f"<h2>{title}</h2>"
            f"<p>run <code>{html.escape(run['id'])}</code> · status <b>{html.escape(run['status'])}</b>{reason}"
            f" · created {html.escape(run['created'])}"
            + (f" · final {final}" if final else "") + "</p>"
            f"<p class='lipschitz-verdict'>verdict: <b>{html.escape(said.text)}</b></p>"
            f"{_edge(edge)}{note}<table style='font-size:90%'>{rows}</table>")
    return Div(text=text, sizing_mode="stretch_width")


def write_report(store: RunStore | str | os.PathLike, run_id: str, path: str | os.PathLike | None = None) -> Path:
    """Write ``run_id``'s report and register it as the run's ``"report"`` artifact.

    ``path`` defaults to ``reports/<run_id>.html`` beside the store file (that
    is ``runs/reports/<run_id>.html`` for the default store).
    """
    store = as_store(store)
    run = store.get_run(run_id)              # raises ValueError naming an unknown id
    records = store.records(run_id)
    epochs = [r for r in records if r.get("kind") == "epoch"]
    lipschitz = has_lipschitz_fields(records)

    figs = RunFigures(ncols=REPORT_COLUMNS, height=REPORT_HEIGHT)      # the page's width
    figs.load(records)
    said = verdict(records, run["status"], run.get("reason"), config=run["config"])
    header = _header(run, epochs, lipschitz, said, edge_line(records))
    doc = column(header, figs.layout, sizing_mode="stretch_width")

    out = Path(path) if path is not None else Path(store.path).parent / "reports" / f"{run_id}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(file_html(doc, INLINE, title=f"lipschitz-lab {run_id}"), encoding="utf-8")
    store.add_artifact(run_id, "report", out)
    return out
