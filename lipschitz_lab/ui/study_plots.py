"""Bokeh comparison plots of a study: one line or bar per lr policy.

- validation accuracy per epoch (mean over seeds), one line per policy;
- the learning rate per step (log axis, ticks around the rates), one line per policy (its lowest seed);
- final test accuracy per policy, a bar with ±1 std whiskers over seeds.

:class:`StudyFigures` owns one ``ColumnDataSource`` per policy and figure, so
the live study panel can update them in place; :func:`study_figures` and
:func:`save_study_html` fill them once from the store (the CLI's
``plots.html``).  Every number comes from the store's records through
:mod:`lipschitz_lab.studies.results`.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
from bokeh.layouts import column
from bokeh.models import (ColumnDataSource, DataRange1d, FactorRange, HoverTool, Legend, LegendItem, Range1d,
                          Whisker)
from bokeh.palettes import Category20_20, Turbo256
from bokeh.plotting import figure

from lipschitz_lab.ui.axes import integer_axis, legend_outside, readable_log_axis

__all__ = ["StudyFigures", "policy_colors", "study_figures", "save_study_html", "TITLES"]

TITLES = {
    "acc": "Validation accuracy per epoch (mean over seeds)",
    "lr": "Learning rate per step (log; lowest seed)",
    "bars": "Final test accuracy (mean ± std over seeds)",
}

#: a lipschitz policy draws solid, a baseline dashed, so the families read apart at a glance
DASH = {"lipschitz": "solid", "lipschitz-scaled": "dotdash", "baseline": "dashed"}


def policy_colors(policies: list[str]) -> dict[str, str]:
    """One colour per policy: Category20 up to 20, else evenly spaced over Turbo."""
    if len(policies) <= 20:
        return dict(zip(policies, Category20_20))
    idx = np.linspace(0, 255, len(policies)).astype(int)
    return {p: Turbo256[i] for p, i in zip(policies, idx)}


def _clean(values) -> list[float]:
    return [float(v) if v is not None and np.isfinite(v) else math.nan for v in values]


class StudyFigures:
    """The three comparison figures of a study, with one data source per policy."""

    def __init__(self, policies: list[str], families: dict[str, str] | None = None,
                 width: int = 900, height: int = 330, sizing_mode: str | None = None):
        self.policies = list(policies)
        size = {"sizing_mode": sizing_mode} if sizing_mode else {"width": width}
        self.colors = policy_colors(self.policies)
        families = families or {}
        self.acc_sources = {p: ColumnDataSource({"epoch": [], "val_acc": [], "seeds": []}) for p in self.policies}
        self.lr_sources = {p: ColumnDataSource({"step": [], "lr": []}) for p in self.policies}
        self.bar_source = ColumnDataSource({"policy": [], "mean": [], "lower": [], "upper": [], "color": [],
                                            "std": [], "runs": []})

        # fixed ranges until the first rows arrive (_fit): BokehJS warns about a DataRange1d with
        # nothing to fit ("could not set initial ranges"), and a live study starts empty
        self._fitted: set[str] = set()
        self.acc = figure(title=TITLES["acc"], height=height, x_axis_label="epoch", x_range=Range1d(0, 1),
                          y_range=Range1d(0, 1), y_axis_label="val accuracy",
                          tools="pan,wheel_zoom,box_zoom,reset,save", **size)
        self.lr = figure(title=TITLES["lr"], height=height, x_axis_label="step", x_range=Range1d(0, 1),
                         y_range=Range1d(1e-3, 10), y_axis_label="lr", y_axis_type="log",
                         tools="pan,wheel_zoom,box_zoom,reset,save", **size)
        integer_axis(self.acc.xaxis)                    # epochs and steps are whole numbers
        integer_axis(self.lr.xaxis)
        readable_log_axis(self.lr.yaxis)                # ticks around the rates, wherever they sit
        acc_items, lr_items = [], []
        for p in self.policies:
            dash = DASH.get(families.get(p, "baseline"), "solid")
            r1 = self.acc.line("epoch", "val_acc", source=self.acc_sources[p], color=self.colors[p],
                               line_width=2, line_dash=dash)
            self.acc.scatter("epoch", "val_acc", source=self.acc_sources[p], color=self.colors[p], size=4)
            r2 = self.lr.line("step", "lr", source=self.lr_sources[p], color=self.colors[p], line_width=1.5,
                              line_dash=dash)
            acc_items.append(LegendItem(label=p, renderers=[r1]))
            lr_items.append(LegendItem(label=p, renderers=[r2]))
        for fig, items in ((self.acc, acc_items), (self.lr, lr_items)):
            legend_outside(fig, legend=Legend(items=items))
            fig.legend[0].glyph_height = fig.legend[0].label_height = 10
        self.acc.add_tools(HoverTool(tooltips=[("epoch", "@epoch"), ("val acc", "@val_acc{0.0000}"),
                                               ("seeds", "@seeds")]))
        self.lr.add_tools(HoverTool(tooltips=[("step", "@step"), ("lr", "@lr{0.0000e}")]))

        self.bars = figure(title=TITLES["bars"], height=max(height, 18 * len(self.policies) + 60),
                           y_range=FactorRange(*reversed(self.policies)), x_range=Range1d(0, 1),
                           x_axis_label="final test accuracy",
                           tools="save,reset", **size)
        self.bars.hbar(y="policy", right="mean", height=0.7, color="color", source=self.bar_source)
        self.bars.add_layout(Whisker(source=self.bar_source, base="policy", upper="upper", lower="lower",
                                     dimension="width", line_color="black"))
        self.bars.add_tools(HoverTool(tooltips=[("policy", "@policy"), ("mean", "@mean{0.0000}"),
                                                ("std", "@std{0.0000}"), ("runs", "@runs")]))
        self.layout = column(self.acc, self.lr, self.bars, sizing_mode=sizing_mode)

    # -- filling the sources ------------------------------------------------------------
    def set_epochs(self, epochs: pd.DataFrame) -> None:
        """Mean val accuracy per (policy, epoch) from an epoch frame; epochs count from 1."""
        for p, src in self.acc_sources.items():
            g = epochs[epochs.policy == p] if len(epochs) else epochs
            if not len(g):
                src.data = {"epoch": [], "val_acc": [], "seeds": []}
                continue
            acc = g["val_acc"].where(g["val_acc"].notna(), g["test_acc"])
            m = pd.DataFrame({"epoch": g["epoch"], "acc": acc}).groupby("epoch")["acc"].agg(["mean", "count"])
            src.data = {"epoch": [int(e) + 1 for e in m.index], "val_acc": _clean(m["mean"]),
                        "seeds": [int(c) for c in m["count"]]}
        self._fit(self.acc, "x", self.acc_sources, "epoch")

    def set_steps(self, steps: pd.DataFrame) -> None:
        """lr per step of each policy's lowest seed (lr <= 0 or NaN cannot sit on a log axis)."""
        for p, src in self.lr_sources.items():
            g = steps[steps.policy == p] if len(steps) else steps
            if len(g):
                g = g[g.seed == g.seed.min()]
                g = g[np.isfinite(g["lr"]) & (g["lr"] > 0)]
            src.data = {"step": [int(s) for s in g["step"]] if len(g) else [],
                        "lr": _clean(g["lr"]) if len(g) else []}
        self._fit(self.lr, "xy", self.lr_sources, "step")

    def _fit(self, fig, axes: str, sources: dict[str, ColumnDataSource], column: str) -> None:
        """Ranges fitted to the data (DataRange1d) on ``axes`` once ``sources`` hold rows (once only:
        new range models make the document walk its whole model graph)."""
        if fig.id in self._fitted or not any(len(src.data[column]) for src in sources.values()):
            return
        self._fitted.add(fig.id)
        with fig.document.models.freeze() if fig.document is not None else contextlib.nullcontext():
            if "x" in axes:
                fig.x_range = DataRange1d()
            if "y" in axes:
                fig.y_range = DataRange1d()

    def set_table(self, table: pd.DataFrame) -> None:
        """Bars from a results table (``final_test_acc_mean``/``_std``; validation when no test)."""
        if not len(table):
            self.bar_source.data = {k: [] for k in self.bar_source.data}
            return
        use_test = table["final_test_acc_mean"].notna().any()
        mean = table["final_test_acc_mean" if use_test else "final_val_acc_mean"].astype(float)
        std = table["final_test_acc_std" if use_test else "final_val_acc_std"].astype(float).fillna(0.0)
        rows = [(p, m, s, r) for p, m, s, r in zip(table.policy, mean, std, table.runs) if p in self.colors]
        self.bar_source.data = {
            "policy": [r[0] for r in rows], "mean": _clean(r[1] for r in rows),
            "lower": _clean(r[1] - r[2] for r in rows), "upper": _clean(r[1] + r[2] for r in rows),
            "std": _clean(r[2] for r in rows), "runs": [int(r[3]) for r in rows],
            "color": [self.colors[r[0]] for r in rows]}
        if not use_test:
            self.bars.xaxis.axis_label = "final validation accuracy"
        # best on top
        order = [p for _, p in sorted(zip(_clean(mean), table.policy), key=lambda t: (-np.nan_to_num(t[0], nan=-1), t[1]))]
        order += [p for p in self.policies if p not in order]
        self.bars.y_range.factors = list(reversed(order))

    def row_counts(self) -> dict[str, int]:
        """How many points each kind of source holds (tests and the panel's status read it)."""
        return {"acc": sum(len(s.data["epoch"]) for s in self.acc_sources.values()),
                "lr": sum(len(s.data["step"]) for s in self.lr_sources.values()),
                "bars": len(self.bar_source.data["policy"])}


def study_figures(store, spec, table: pd.DataFrame | None = None, **size) -> StudyFigures:
    """The study's figures, filled from the store (``spec``: a StudySpec, or a study name);
    ``size``: StudyFigures' width / height / sizing_mode."""
    from lipschitz_lab.studies.results import epoch_frame, step_frame, study_runs, study_table
    runs = study_runs(store, spec)
    if hasattr(spec, "policies"):
        policies = [p.name for p in spec.policies]
        families = {p.name: p.family for p in spec.policies}
    else:
        policies = list(dict.fromkeys(r.policy for r in runs))
        families = {r.policy: r.family for r in runs}
    figs = StudyFigures(policies, families, **size)
    figs.set_epochs(epoch_frame(store, spec, runs))
    figs.set_steps(step_frame(store, spec, runs, fields=("lr",)))
    figs.set_table(study_table(store, spec) if table is None else table)
    return figs


def save_study_html(store, spec, path: str | Path, table: pd.DataFrame | None = None,
                    title: str | None = None) -> Path:
    """One self-contained HTML file (BokehJS inline: opens offline) of the study's plots."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE
    figs = study_figures(store, spec, table, sizing_mode="stretch_width")     # the page's width
    name = getattr(spec, "name", spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(file_html(figs.layout, INLINE, title or f"lipschitz-lab study: {name}"))
    return path
