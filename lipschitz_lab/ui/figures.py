"""Bokeh figures of one run, built from its records; shared by the report and the panels.

Records become columns here and nowhere else.  A field a record lacks, or
holds as ``None`` (baseline policies have no K_z, L or gradient maxima), is
NaN in its column, which Bokeh draws as a gap.  Every number plotted comes
from the records: the bounds are the trainer's ``L``, ``L_paper`` and
``L_corrected``; no formula is typed here.

:class:`RunFigures` owns three ``ColumnDataSource``\\ s (steps, epochs, layers)
and the figures drawn from them.  ``load`` replaces the data at once (the
report); ``add_steps`` / ``add_epochs`` stream them in (the live panel) and
thin the steps still to come so that a long run stays at a few thousand rows.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable

import numpy as np

from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource, GlyphRenderer, HoverTool, Legend, LegendItem, Line, Span
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

Record = dict[str, Any]

#: step-record fields the figures use, in column order; ``gap`` is grad_last / L
STEP_COLUMNS = ("step", "epoch", "lr", "K_z", "L", "L_paper", "L_corrected", "grad_last",
                "gap", "gap_paper", "gap_corrected", "loss", "acc")
EPOCH_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                 "test_loss", "test_acc")

#: figure titles, by key (tests and the report look for these)
TITLES = {
    "loss": "Loss (train, val per epoch)",
    "acc": "Accuracy (train, val per epoch)",
    "lr": "Learning rate lr = 1/L over steps (log)",
    "K_z": "K_z over steps",
    "grad": "Measured grad_last against the bound L",
    "gap": "Gap: grad_last / L (below 1: the bound holds)",
    "layers": "Per-layer max |grad| against the last layer's (eq. 1)",
}

#: a live run keeps at most this many step rows; beyond it every other row goes
MAX_POINTS = 4000


def number(value: Any) -> float:
    """A record value as a float; None and non-numbers become NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ratios(num: list[float], den: list[float]) -> list[float]:
    """num / den, NaN where den is 0 or NaN (a bound of 0 gives no finite gap)."""
    return [n / d if d else math.nan for n, d in zip(num, den)]


def step_columns(records: Iterable[Record]) -> dict[str, list[float]]:
    """Columns of :data:`STEP_COLUMNS` from step records (other kinds are skipped)."""
    rows = [r for r in records if r.get("kind", "step") == "step"]
    cols = {c: [number(r.get(c)) for r in rows] for c in STEP_COLUMNS if not c.startswith("gap")}
    cols["gap"] = _ratios(cols["grad_last"], cols["L"])
    cols["gap_paper"] = _ratios(cols["grad_last"], cols["L_paper"])
    cols["gap_corrected"] = _ratios(cols["grad_last"], cols["L_corrected"])
    return {c: cols[c] for c in STEP_COLUMNS}


def epoch_columns(records: Iterable[Record]) -> dict[str, list[float]]:
    """Columns of :data:`EPOCH_COLUMNS` from epoch records; x is ``epoch + 1`` (epochs done)."""
    cols: dict[str, list[float]] = {c: [] for c in EPOCH_COLUMNS}
    for r in records:
        if r.get("kind") != "epoch":
            continue
        for c in EPOCH_COLUMNS:
            cols[c].append(number(r.get(c)))
    cols["epochs_done"] = [e + 1 for e in cols["epoch"]]
    return cols


def layer_names(records: Iterable[Record]) -> list[str]:
    """The layers of the first step record that has ``grad_layers``, in model order."""
    for r in records:
        layers = r.get("grad_layers") if r.get("kind", "step") == "step" else None
        if layers:
            return list(layers)
    return []


def layer_columns(records: Iterable[Record], names: list[str]) -> dict[str, list[float]]:
    """``step`` and one column ``g<i>`` per layer name (max |grad| of that layer)."""
    cols: dict[str, list[float]] = {"step": [], **{f"g{i}": [] for i in range(len(names))}}
    for r in records:
        if r.get("kind", "step") != "step":
            continue
        layers = r.get("grad_layers") or {}
        cols["step"].append(number(r.get("step")))
        for i, name in enumerate(names):
            cols[f"g{i}"].append(number(layers.get(name)))
    return cols


def _arrays(cols: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """float64 arrays: Bokeh sends them as one binary buffer each, where a list of
    floats is encoded number by number (the bulk of a batch's cost on the kernel's loop)."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def has_lipschitz_fields(records: Iterable[Record]) -> bool:
    """True when some step record carries a K_z (a Lipschitz policy's run)."""
    return any(r.get("kind", "step") == "step" and r.get("K_z") is not None for r in records)


def _fig(title: str, x_label: str, y_label: str, *, y_log: bool = False, x_range=None,
         width: int = 430, height: int = 260):
    kw = dict(title=title, width=width, height=height, x_axis_label=x_label, y_axis_label=y_label,
              tools="pan,box_zoom,wheel_zoom,reset,save", toolbar_location="above")
    if y_log:
        kw["y_axis_type"] = "log"
    if x_range is not None:
        kw["x_range"] = x_range
    p = figure(**kw)
    p.title.text_font_size = "11pt"
    return p


def _legend(p) -> None:
    if p.legend:
        p.legend.location = "top_right"
        p.legend.click_policy = "hide"
        p.legend.label_text_font_size = "8pt"
        p.legend.background_fill_alpha = 0.6


class RunFigures:
    """The figures of one run and the sources they draw from.

    ``steps``  : one row per (kept) step record, columns :data:`STEP_COLUMNS`
    ``epochs`` : one row per epoch record, columns :data:`EPOCH_COLUMNS` + ``epochs_done``
    ``layers`` : ``step`` and ``g0 .. g<n-1>``, one per layer in :attr:`layer_names`
    """

    def __init__(self, *, width: int = 430, height: int = 260, max_points: int = MAX_POINTS):
        self.max_points = max_points
        self.stride = 1          # keep the step records whose step is a multiple of this
        self._rows_at_stride = 0
        self.layer_names: list[str] = []
        self._layers_checked = False    # this run's layer names were compared with the lines drawn
        self.steps = ColumnDataSource(step_columns([]))
        self.epochs = ColumnDataSource(epoch_columns([]))
        self.layers = ColumnDataSource({"step": []})
        size = dict(width=width, height=height)
        self.figures = self._build(size)
        self.layout = gridplot(
            [[self.figures["loss"], self.figures["acc"]],
             [self.figures["lr"], self.figures["K_z"]],
             [self.figures["grad"], self.figures["gap"]],
             [self.figures["layers"], None]],
            toolbar_location="right", merge_tools=True)

    # -- figures --------------------------------------------------------------------
    def _build(self, size: dict) -> dict:
        S, E = self.steps, self.epochs
        f: dict = {}
        p = f["loss"] = _fig(TITLES["loss"], "epochs done", "loss", **size)
        p.line("epochs_done", "train_loss", source=E, color="#1f77b4", line_width=2, legend_label="train")
        p.scatter("epochs_done", "train_loss", source=E, color="#1f77b4", size=5)
        p.line("epochs_done", "val_loss", source=E, color="#ff7f0e", line_width=2, legend_label="val")
        p.scatter("epochs_done", "val_loss", source=E, color="#ff7f0e", size=5)
        _legend(p)
        p = f["acc"] = _fig(TITLES["acc"], "epochs done", "accuracy", x_range=f["loss"].x_range, **size)
        p.line("epochs_done", "train_acc", source=E, color="#1f77b4", line_width=2, legend_label="train")
        p.scatter("epochs_done", "train_acc", source=E, color="#1f77b4", size=5)
        p.line("epochs_done", "val_acc", source=E, color="#ff7f0e", line_width=2, legend_label="val")
        p.scatter("epochs_done", "val_acc", source=E, color="#ff7f0e", size=5)
        _legend(p)
        p.legend.location = "bottom_right"

        p = f["lr"] = _fig(TITLES["lr"], "step", "lr", y_log=True, **size)
        p.line("step", "lr", source=S, color="#2ca02c", line_width=2, legend_label="lr")
        p.add_tools(HoverTool(tooltips=[("step", "@step"), ("epoch", "@epoch"), ("lr", "@lr{0.000e}")]))
        _legend(p)
        steps_x = p.x_range
        p = f["K_z"] = _fig(TITLES["K_z"], "step", "K_z", x_range=steps_x, **size)
        p.line("step", "K_z", source=S, color="#9467bd", line_width=2, legend_label="K_z")
        _legend(p)

        p = f["grad"] = _fig(TITLES["grad"], "step", "max |∂E/∂w|, L", y_log=True, x_range=steps_x, **size)
        p.line("step", "grad_last", source=S, color="black", line_width=2, legend_label="grad_last (measured)")
        p.line("step", "L", source=S, color="#d62728", line_width=2, legend_label="L (in use)")
        p.line("step", "L_paper", source=S, color="#ff7f0e", line_dash="dashed", line_width=2,
               legend_label="L_paper")
        p.line("step", "L_corrected", source=S, color="#17becf", line_dash="dotted", line_width=2,
               legend_label="L_corrected")
        p.add_tools(HoverTool(tooltips=[("step", "@step"), ("grad_last", "@grad_last{0.000e}"),
                                        ("L", "@L{0.000e}"), ("L_paper", "@L_paper{0.000e}"),
                                        ("L_corrected", "@L_corrected{0.000e}")]))
        _legend(p)

        p = f["gap"] = _fig(TITLES["gap"], "step", "grad_last / L", x_range=steps_x, **size)
        p.line("step", "gap", source=S, color="#d62728", line_width=2, legend_label="/ L (in use)")
        p.line("step", "gap_paper", source=S, color="#ff7f0e", line_dash="dashed", legend_label="/ L_paper")
        p.line("step", "gap_corrected", source=S, color="#17becf", line_dash="dotted",
               legend_label="/ L_corrected")
        p.add_layout(Span(location=1.0, dimension="width", line_color="gray", line_dash="dashed"))
        _legend(p)

        p = f["layers"] = _fig(TITLES["layers"], "step", "max |∂E/∂w| of the layer", y_log=True,
                               x_range=steps_x, **size)
        self._layers_legend = Legend(items=[], location="top_right", click_policy="hide",
                                     label_text_font_size="8pt", background_fill_alpha=0.6)
        p.add_layout(self._layers_legend)
        return f

    def set_layers(self, names: list[str], records: Iterable[Record] = ()) -> None:
        """Draw one line per layer; the last layer (the one the bound is about) bold and black.

        The lines get a new source that already holds ``records``' rows, and the
        figure gets its renderers and legend items in one assignment each: BokehJS
        then never sees a line whose column is not there yet.  New models make
        the document walk its whole model graph again (the costliest thing the
        live panel does, ~0.1 s): both assignments share one walk.
        """
        names = list(names)
        self.layer_names = names
        self.layers = ColumnDataSource(layer_columns(records, names))
        renderers, items = [], []
        last = len(names) - 1
        for i, name in enumerate(names):
            label = f"layer {name}" if name.isdigit() else name     # nn.Sequential names its layers 0, 1, ...
            glyph = Line(x="step", y=f"g{i}", line_color="black" if i == last else Category10_10[i % 10],
                         line_width=3 if i == last else 1.5)
            r = GlyphRenderer(data_source=self.layers, glyph=glyph)
            renderers.append(r)
            items.append(LegendItem(label=f"{label} (last layer)" if i == last else label, renderers=[r]))
        p = self.figures["layers"]
        doc = p.document
        with doc.models.freeze() if doc is not None else contextlib.nullcontext():
            p.renderers = renderers
            self._layers_legend.items = items

    # -- data -----------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the sources (before a run starts: nothing may be streaming then)."""
        self.stride, self._rows_at_stride = 1, 0
        self._layers_checked = False
        self.steps.data = step_columns([])
        self.epochs.data = epoch_columns([])
        # the layer lines stay: the next run of the same model streams into them
        # (add_steps redraws them when the layers differ)
        self.layers.data = layer_columns([], self.layer_names)

    def plan(self, total_steps: int | None) -> None:
        """Keep about ``max_points`` rows over ``total_steps`` steps: rows only at steps that
        are multiples of the stride from now on.  The stride only grows."""
        if total_steps:
            stride = max(1, math.ceil(total_steps / self.max_points))
            if stride > self.stride:
                self.stride, self._rows_at_stride = stride, 0

    def load(self, records: list[Record]) -> None:
        """Show a whole run at once; more than ``max_points`` steps are thinned evenly."""
        steps = [r for r in records if r.get("kind") == "step"]
        self.stride = max(1, math.ceil(len(steps) / self.max_points))
        kept = steps[::self.stride]
        self.set_layers(layer_names(kept), kept)
        self.steps.data = step_columns(kept)
        self.epochs.data = epoch_columns(records)

    def add_steps(self, records: list[Record]) -> int:
        """Stream step records in (one message per source); returns how many rows were added.

        Rows already drawn are never rewritten: BokehJS (through jupyter_bokeh) can
        apply a replacement of ``data`` after a stream sent later, which leaves rows
        out of order.  So thinning only ever skips future steps: a row is kept when
        its step is a multiple of the stride, and the stride doubles whenever
        ``max_points`` rows were added at the current one (``plan`` sets it up front).
        """
        if not records:
            return 0
        # the run's first step records say which layer lines it needs; the lines of
        # the run before are kept when they are the same (no new Bokeh models)
        new_layers = False
        if not self._layers_checked and any(r.get("kind", "step") == "step" for r in records):
            self._layers_checked = True
            names = layer_names(records)
            new_layers = names != self.layer_names
        kept = []
        for r in records:
            if int(r.get("step", 0)) % self.stride == 0:
                kept.append(r)
                self._rows_at_stride += 1
                if self._rows_at_stride >= self.max_points:
                    self.stride, self._rows_at_stride = self.stride * 2, 0
        if new_layers:   # the lines arrive with their first rows, before any stream
            self.set_layers(names, kept)
        elif kept and self.layer_names:
            self.layers.stream(_arrays(layer_columns(kept, self.layer_names)))
        if kept:
            self.steps.stream(_arrays(step_columns(kept)))
        return len(kept)

    def add_epochs(self, records: list[Record]) -> None:
        """Stream epoch records in (a few a minute: plain lists will do)."""
        cols = epoch_columns(records)
        if cols["epoch"]:
            self.epochs.stream(cols)
