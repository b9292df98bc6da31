"""The figures of one run and the sources they draw from; shared by the report and the panels.

Records become columns in :mod:`lipschitz_lab.ui.columns`; each figure draws as
:mod:`lipschitz_lab.ui.run_plots` says.  :class:`RunFigures` owns the sources
(steps, epochs, layers, marks) and the layout: ``load`` replaces the data at once
(the report); ``add_steps`` / ``add_epochs`` stream them in (the live panel) and
thin the steps still to come so that a long run stays at a few thousand rows.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable

from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource, DataRange1d, GlyphRenderer, Line, LogScale, Range1d

from lipschitz_lab.ui.columns import (EPOCH_COLUMNS, STEP_COLUMNS, arrays, epoch_columns, has_curvature_fields,
                                      has_lipschitz_fields, has_smoothness_fields, layer_columns,
                                      layer_names, mark_columns, number, step_columns)
from lipschitz_lab.ui.run_plots import (MAX_LAYER_ITEMS, TITLES, bound_figures, epoch_figures, layer_legend,
                                        layer_style, layers_figure, rate_figures)
from lipschitz_lab.ui.stability_plots import STABILITY_FIGURES, Stability

__all__ = ["RunFigures", "TITLES", "STEP_COLUMNS", "EPOCH_COLUMNS", "MAX_POINTS", "MAX_LAYER_ITEMS", "number",
           "step_columns", "epoch_columns", "mark_columns", "layer_names", "layer_columns", "has_lipschitz_fields",
           "has_smoothness_fields", "has_curvature_fields", "layer_style", "layer_legend"]

Record = dict[str, Any]

#: a live run keeps at most this many step rows; beyond it every other row goes
MAX_POINTS = 4000
#: figures in layout order (the smoothness figure shows only for runs whose records carry β, the stability
#: figures only for runs that measure their curvature)
ORDER = ("loss", "acc", "lr", "K_z", "edge", "curv", "grad", "gap", "layers", "smooth")
#: figures of a Lipschitz policy's fields only: a baseline run leaves them out (they would be empty boxes)
BOUND_FIGURES = ("K_z", "grad", "gap", "layers")
#: the figures that draw the epoch records and those that draw the step records
EPOCH_FIGURES, STEP_FIGURES = ("loss", "acc"), ("lr", "K_z", "grad", "gap", "layers", "smooth", *STABILITY_FIGURES)


class RunFigures:
    """The figures of one run and the sources they draw from.

    ``steps``  : one row per (kept) step record, columns :data:`STEP_COLUMNS`
    ``epochs`` : one row per epoch record, columns :data:`EPOCH_COLUMNS` + ``epochs_done``
    ``layers`` : ``step`` and ``g0 .. g<n-1>``, one per layer in :attr:`layer_names`
    ``marks``  : ``step`` and ``why`` of every step whose L is 0 or negative (never thinned)

    ``ncols`` figures a row, each ``height`` px high; they share the width of the page
    or notebook cell (``stretch_width``: legends beside the frames then stay in view at
    any width), or are ``width`` px wide each when a width is given.
    """

    def __init__(self, *, width: int | None = None, height: int = 260, max_points: int = MAX_POINTS,
                 ncols: int = 2):
        self.max_points = max_points
        self.stride = 1          # keep the step records whose step is a multiple of this
        self._rows_at_stride = 0
        self.layer_names: list[str] = []
        self._layers_checked = False    # this run's layer names were compared with the lines drawn
        self._kind_checked = False      # this run's records were asked whether they carry K_z and β
        self.steps = ColumnDataSource(step_columns([]))
        self.epochs = ColumnDataSource(epoch_columns([]))
        self.layers = ColumnDataSource({"step": []})
        self.marks = ColumnDataSource(mark_columns([]))
        self.stability = Stability(max_points)   # the measured steps (sharpness_every) and the edge limit
        sizing_mode = "stretch_width" if width is None else None
        size = {"height": height, "sizing_mode": sizing_mode} if width is None else {"width": width, "height": height}
        self.figures = self._build(size)
        self._fitted: dict[str, bool] = {}
        self._placeholders = self._fixed_ranges()
        self.fit_ranges("epochs", False)
        self.fit_ranges("steps", False)
        self.show_smoothness(False)
        self.show_curvature(False)
        self._grid = dict(ncols=ncols, sizing_mode=sizing_mode, toolbar_location="right", merge_tools=True)
        self.layout = gridplot([self.figures[k] for k in ORDER], **self._grid)

    # -- figures --------------------------------------------------------------------
    def _build(self, size: dict) -> dict:
        f = epoch_figures(self.epochs, size)
        f.update(rate_figures(self.steps, self.marks, size))
        f.update(bound_figures(self.steps, self.marks, size, f["lr"].x_range))
        f["layers"], self._layers_legend = layers_figure(size, f["lr"].x_range)
        f.update(self.stability.figures(self.steps, size, f["lr"].x_range))
        return f

    def show_bounds(self, on: bool) -> None:
        """Show the K_z, bound, gap and per-layer figures, or leave them out (a baseline policy's
        records carry no K_z, L or gradient maxima)."""
        for key in BOUND_FIGURES:
            self._show(key, on)

    def show_smoothness(self, on: bool) -> None:
        """Show β and c/β (the smoothness figure, the lr_smooth entry of the lr legend) or hide them:
        records without β draw nothing, and their figure would be an empty box."""
        self._show("smooth", on)
        for item in self.figures["lr"].legend[0].items:
            if any(getattr(r.glyph, "y", None) == "lr_smooth" for r in item.renderers):
                item.visible = on

    def show_curvature(self, on: bool) -> None:
        """Show the stability figures (edge = lr·λ_max; lr, 1/L and 1/λ_max) or hide them: a run without
        ``sharpness_every`` measures no curvature."""
        for key in STABILITY_FIGURES:
            self._show(key, on)

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
        renderers, labels = [], []
        for i, (label, color, width) in enumerate(layer_style(names)):
            glyph = Line(x="step", y=f"g{i}", line_color=color, line_width=width)
            renderers.append(GlyphRenderer(data_source=self.layers, glyph=glyph))
            labels.append(label)
        p = self.figures["layers"]
        doc = p.document
        # the range placeholder stays (see _fixed_ranges)
        held = [self._placeholders["layers"]] if hasattr(self, "_placeholders") else []
        with doc.models.freeze() if doc is not None else contextlib.nullcontext():
            p.renderers = renderers + held
            self._layers_legend.items = layer_legend(labels, renderers)
            if isinstance(p.y_range, DataRange1d):
                p.y_range.renderers = renderers + held

    def _show(self, key: str, on: bool) -> None:
        """Show or hide a figure.  A hidden figure's renderers count as invisible to its DataRange1d,
        which then warns in the console: it gets a fixed y range while hidden (only a change of
        visibility swaps the range, so the document rarely walks its model graph for it)."""
        p = self.figures[key]
        if p.visible == on and hasattr(self, "_y_ranges"):
            return
        p.visible = on
        if hasattr(self, "_y_ranges"):
            log = isinstance(p.y_scale, LogScale)
            p.y_range = self._y_ranges[key] if on else (Range1d(0.1, 10) if log else Range1d(0, 1))

    @property
    def layer_lines(self) -> list[GlyphRenderer]:
        """The per-layer figure's lines (without its range placeholder)."""
        return [r for r in self.figures["layers"].renderers if r is not self._placeholders["layers"]]

    def _fixed_ranges(self) -> dict[str, GlyphRenderer]:
        """Every figure's ranges, made once: DataRange1d that fit the visible renderers only, and in
        each figure a placeholder (two invisible points over (0, 1), or (0.1, 10) on a log axis) that
        holds the ranges while the figure has no rows.  ``fit_ranges`` only shows or hides the
        placeholders: no new range models, so the document never walks its model graph for them
        (~0.1-0.7 s on the kernel's thread, twice a run, while the run needs the GIL)."""
        placeholders, self._y_ranges = {}, {}
        for keys in (EPOCH_FIGURES, STEP_FIGURES):
            x = DataRange1d(only_visible=True)
            for key in keys:
                p = self.figures[key]
                lo, hi = (0.1, 10.0) if isinstance(p.y_scale, LogScale) else (0.0, 1.0)
                placeholders[key] = p.scatter(x=[0, 1], y=[lo, hi], alpha=0, size=1)
                y = DataRange1d(only_visible=True,
                                renderers=[r for r in p.renderers if r.y_range_name == "default"])
                self._y_ranges[key] = y
                p.update(x_range=x, y_range=y if p.visible else Range1d(lo, hi))
        return placeholders

    def fit_ranges(self, group: str, data: bool) -> None:
        """Ranges fitted to the data of ``group``'s figures ("epochs" or "steps") once they have rows;
        the placeholders' fixed span while they are empty: BokehJS warns in the console about a
        DataRange1d with nothing to fit ("could not set initial ranges", "could not determine
        minimum data value for log axis")."""
        if self._fitted.get(group) == data:
            return
        self._fitted[group] = data
        for key in EPOCH_FIGURES if group == "epochs" else STEP_FIGURES:
            self._placeholders[key].visible = not data

    # -- data -----------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the sources (before a run starts: nothing may be streaming then)."""
        self.stride, self._rows_at_stride = 1, 0
        self._layers_checked = self._kind_checked = False
        # fixed ranges first: a DataRange1d that sees its sources emptied warns in the console
        self.fit_ranges("steps", False)
        self.fit_ranges("epochs", False)
        self.steps.data = step_columns([])
        self.epochs.data = epoch_columns([])
        self.marks.data = mark_columns([])
        self.stability.reset()
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
        """Show a whole run at once; more than ``max_points`` steps are thinned evenly
        (the marked steps are all kept).  :attr:`layout` becomes a grid of the figures
        the run has: no holes, and no empty figure that BokehJS cannot give a range."""
        steps = [r for r in records if r.get("kind") == "step"]
        self.stride = max(1, math.ceil(len(steps) / self.max_points))
        kept = steps[::self.stride]
        self.set_layers(layer_names(kept), kept)
        self.steps.data = step_columns(kept)
        self.epochs.data = epoch_columns(records)
        self.marks.data = mark_columns(steps)
        self.stability.load(steps)
        self.show_bounds(has_lipschitz_fields(steps) or not steps)
        self.show_smoothness(has_smoothness_fields(steps))
        self.show_curvature(has_curvature_fields(steps))
        self._kind_checked = True
        self.fit_ranges("steps", bool(steps))
        self.fit_ranges("epochs", bool(self.epochs.data["epoch"]))
        self.layout = gridplot([self.figures[k] for k in ORDER if self.figures[k].visible], **self._grid)

    def _first_look(self, records: list[Record]) -> list[str] | None:
        """On a run's first step records: show the bound figures and β, or not; and the layer
        names when they differ from the lines drawn (None: keep the lines; no new Bokeh models)."""
        if not self._kind_checked:
            self._kind_checked = True
            self.show_bounds(has_lipschitz_fields(records))
            self.show_smoothness(has_smoothness_fields(records))
            self.show_curvature(has_curvature_fields(records))
            self.stability.first_look(records)
        if not self._layers_checked:
            self._layers_checked = True
            names = layer_names(records)
            if names != self.layer_names:
                return names
        return None

    def add_steps(self, records: list[Record]) -> int:
        """Stream step records in (one message per source); returns how many rows were added.

        Rows already drawn are never rewritten: BokehJS (through jupyter_bokeh) can
        apply a replacement of ``data`` after a stream sent later, which leaves rows
        out of order.  So thinning only ever skips future steps: a row is kept when
        its step is a multiple of the stride, and the stride doubles whenever
        ``max_points`` rows were added at the current one (``plan`` sets it up front).
        Marked steps (L = 0) are streamed whatever the stride: they are few, and each matters.
        """
        records = [r for r in records if r.get("kind", "step") == "step"]
        if not records:
            return 0
        new_layers = self._first_look(records)
        kept = []
        for r in records:
            if int(r.get("step", 0)) % self.stride == 0:
                kept.append(r)
                self._rows_at_stride += 1
                if self._rows_at_stride >= self.max_points:
                    self.stride, self._rows_at_stride = self.stride * 2, 0
        if new_layers is not None:   # the lines arrive with their first rows, before any stream
            self.set_layers(new_layers, kept)
        elif kept and self.layer_names:
            self.layers.stream(arrays(layer_columns(kept, self.layer_names)))
        if kept:
            self.steps.stream(arrays(step_columns(kept)))
        self.stability.add(records)            # the measured steps, whatever the steps' stride
        marks = mark_columns(records)
        if marks["step"]:
            self.marks.stream(marks)
        self.fit_ranges("steps", True)   # after the rows: a DataRange1d over empty sources warns
        return len(kept)

    def add_epochs(self, records: list[Record]) -> None:
        """Stream epoch records in (a few a minute: plain lists will do)."""
        cols = epoch_columns(records)
        if cols["epoch"]:
            self.epochs.stream(cols)
            self.fit_ranges("epochs", True)
