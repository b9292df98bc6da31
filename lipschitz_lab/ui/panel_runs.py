"""The runs panel: a table of the store's runs, a multi-select, and their curves overlaid.

Overlays: validation accuracy per epoch, the learning rate per step (log) and
the training loss per step.  Each chosen run is one line in each figure; the
sources hold one row per run (``multi_line``), so choosing runs replaces them.
"""
from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource, DataRange1d, LogScale, Range1d
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from lipschitz_lab.runs import RunStore
from lipschitz_lab.runs.verdict import verdict
from lipschitz_lab.ui._bridge import load_bokehjs
from lipschitz_lab.ui.axes import integer_axis, legend_outside, readable_log_axis
from lipschitz_lab.ui.bokeh_widget import OneWayBokeh
from lipschitz_lab.ui.figures import epoch_columns, number, step_columns
from lipschitz_lab.ui.report import as_store

#: the table's columns: (header, how to get it from a run and its last epoch record)
COLUMNS = ("id", "name", "status", "verdict", "dataset", "model", "loss", "policy", "final val_acc",
           "final test_acc")
#: step rows drawn per run at most (evenly thinned beyond)
MAX_POINTS = 2000


def _summary(run: dict, records: list[dict]) -> dict[str, Any]:
    cfg = run["config"]
    policy = cfg.get("lr_policy", "?")
    if policy == "lipschitz":
        policy = f"lipschitz ({cfg.get('bound')}, per {cfg.get('recompute')}, {cfg.get('optimizer')})"
    epochs = [r for r in records if r.get("kind") == "epoch"]
    last = epochs[-1] if epochs else {}
    said = verdict(records, run["status"], run.get("reason"), config=cfg)
    return {"id": run["id"], "name": run["name"] or "", "status": run["status"], "verdict": said.kind,
            "why": said.text, "dataset": cfg.get("dataset", "?"), "model": cfg.get("model", "?"),
            "loss": cfg.get("loss", "?"), "policy": policy,
            "final val_acc": number(last.get("val_acc")), "final test_acc": number(last.get("test_acc"))}


def _title(summary: dict[str, Any], column: str) -> str:
    """The verdict's cell carries the whole sentence as its tooltip."""
    return f" title='{html.escape(summary['why'], quote=True)}'" if column == "verdict" else ""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


class RunsPanel(widgets.VBox):
    """Browse a run store; choose runs to overlay their curves."""

    def __init__(self, store: RunStore | str | os.PathLike | None = None):
        self.store = as_store(store)
        self.table = widgets.HTML()
        self.select = widgets.SelectMultiple(options=[], rows=8, description="runs",
                                             layout=widgets.Layout(width="640px"))
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.report_button = widgets.Button(description="Report", icon="file",
                                            tooltip="the chosen runs' reports")
        self.export_button = widgets.Button(description="Export CSV", icon="download",
                                            tooltip="the chosen runs' step records as CSV")
        self.report_button.on_click(lambda _b: self.links_for("report"))
        self.export_button.on_click(lambda _b: self.links_for("csv"))
        self.links = widgets.HTML()
        self.select.observe(lambda change: self.overlay(change["new"]), names="value")
        self.summaries: list[dict[str, Any]] = []

        empty = {"xs": [], "ys": [], "label": [], "color": []}
        self.acc = ColumnDataSource(dict(empty))
        self.lr = ColumnDataSource(dict(empty))
        self.loss = ColumnDataSource(dict(empty))
        self.acc_points = ColumnDataSource({"x": [], "y": [], "color": []})   # one epoch is a point, not a line
        self.figures = {
            "acc": self._fig("Validation accuracy per epoch", "epochs done", "val_acc", self.acc),
            "lr": self._fig("Learning rate per step (log)", "step", "lr", self.lr, y_log=True),
            "loss": self._fig("Training loss per step (log)", "step", "loss", self.loss, y_log=True),
        }
        self.figures["acc"].scatter("x", "y", source=self.acc_points, color="color", size=6)
        load_bokehjs()
        f = self.figures
        self.plot = OneWayBokeh(gridplot([[f["acc"], f["lr"]], [f["loss"], None]]))
        self.refresh()
        hint = widgets.HTML("<i>Choose runs (ctrl- or shift-click) to overlay their curves.</i>")
        buttons = widgets.VBox([self.refresh_button, self.report_button, self.export_button])
        super().__init__(children=[self.table, hint, widgets.HBox([self.select, buttons]), self.links,
                                   self.plot])
        self.add_class("lipschitz-runs-panel")

    @staticmethod
    def _fig(title: str, x: str, y: str, source: ColumnDataSource, y_log: bool = False):
        p = figure(title=title, width=720, height=260, x_axis_label=x, y_axis_label=y,
                   y_axis_type="log" if y_log else "linear", tools="pan,box_zoom,wheel_zoom,reset,save",
                   x_range=Range1d(0, 1), y_range=Range1d(0.1, 10) if y_log else Range1d(0, 1))
        p.multi_line("xs", "ys", source=source, color="color", line_width=2, legend_field="label")
        integer_axis(p.xaxis)
        if y_log:
            readable_log_axis(p.yaxis)
        legend_outside(p)                  # click an entry to hide its run
        p.legend.label_text_font_size = "8pt"
        return p

    def _fit(self, data: bool) -> None:
        """Ranges fitted to the runs drawn; fixed ones while none is (BokehJS warns about an
        empty DataRange1d in the console)."""
        for p in self.figures.values():
            log = isinstance(p.y_scale, LogScale)
            if data:
                p.update(x_range=DataRange1d(), y_range=DataRange1d())
            else:
                p.update(x_range=Range1d(0, 1), y_range=Range1d(0.1, 10) if log else Range1d(0, 1))

    def refresh(self) -> None:
        """Read the store again: the table and the choices."""
        runs = self.store.list_runs()
        self.summaries = []
        for run in runs:
            self.summaries.append(_summary(run, self.store.records(run["id"])))
        head = "".join(f"<th style='padding:0 .6em;text-align:left'>{c}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td style='padding:0 .6em'{_title(s, c)}>{_cell(s[c])}</td>"
                                        for c in COLUMNS) + "</tr>" for s in reversed(self.summaries))
        self.table.value = (f"<b>{len(runs)} runs</b> in <code>{html.escape(str(self.store.path))}</code>"
                            f"<table style='font-size:90%'><tr>{head}</tr>{body}</table>")
        chosen = [v for v in self.select.value if any(s["id"] == v for s in self.summaries)]
        self.select.options = [(f"{s['id']}  {s['name']}  {s['dataset']}/{s['model']}/{s['loss']}  "
                                f"{s['policy']}  {s['verdict']}", s["id"]) for s in reversed(self.summaries)]
        self.select.value = tuple(chosen)

    def links_for(self, what: str) -> None:
        """Write the chosen runs' reports (``"report"``) or step CSVs (``"csv"``) and offer each as a
        download link (a data URL: the app's server serves no files) beside its path on disk."""
        from lipschitz_lab.ui.report import write_report
        items = []
        for run_id in self.select.value:
            if what == "report":
                path, mime = write_report(self.store, run_id), "text/html"
            else:
                path = Path(self.store.path).parent / "exports" / f"{run_id}.csv"
                path, mime = self.store.export_csv(run_id, path), "text/csv"
            data = base64.b64encode(path.read_bytes()).decode()
            items.append(f"<a download='{path.name}' href='data:{mime};base64,{data}'>{path.name}</a> "
                         f"<code>{html.escape(str(path))}</code>")
        self.links.value = "<br>".join(items) or "<i>choose runs first</i>"

    def overlay(self, run_ids) -> None:
        """Draw the chosen runs (the multi-select calls this)."""
        acc, lr, loss = ({"xs": [], "ys": [], "label": [], "color": []} for _ in range(3))
        for i, run_id in enumerate(run_ids):
            run = self.store.get_run(run_id)
            # one legend entry per run: two runs of the same name differ in their id
            label = f"{run['name']} ({run_id[-4:]})" if run["name"] else run_id
            color = Category10_10[i % 10]
            e = epoch_columns(self.store.records(run_id, "epoch"))
            s = step_columns(self.store.records(run_id, "step"))
            stride = max(1, math.ceil(len(s["step"]) / MAX_POINTS))
            for src, xs, ys in ((acc, e["epochs_done"], e["val_acc"]),
                                (lr, s["step"][::stride], s["lr"][::stride]),
                                (loss, s["step"][::stride], s["loss"][::stride])):
                src["xs"].append(xs)
                src["ys"].append(ys)
                src["label"].append(label)
                src["color"].append(color)
        self._fit(bool(run_ids))
        self.acc.data, self.lr.data, self.loss.data = acc, lr, loss
        self.acc_points.data = {"x": [x for xs in acc["xs"] for x in xs], "y": [y for ys in acc["ys"] for y in ys],
                                "color": [c for xs, c in zip(acc["xs"], acc["color"]) for _ in xs]}


def runs_panel(store: RunStore | str | os.PathLike | None = None) -> RunsPanel:
    """The runs panel; show it as the last expression of a cell."""
    return RunsPanel(store)
