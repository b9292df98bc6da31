"""The stability figures of a run that measures its curvature (``sharpness_every``, issue 23).

- ``edge``: edge = lr·λ_max on the measured steps (markers), with a line at 2, above which gradient
  descent is unstable along the top eigenvector of the Hessian, and one at the run's own
  ``edge_limit`` where it differs (2(1+μ) with heavy-ball momentum); log.
- ``curv``: the rates behind it: lr in use (a line), 1/L (dashed) and 1/λ_max (markers on the
  measured steps); log.  L bounds the gradient, λ_max is the curvature: where lr sits above
  2/λ_max, the edge figure's markers sit above 2.

:class:`Stability` owns the measured steps' source and the edge limit's.  A run measures every
N-th step only, so the steps' source (thinned to a stride for long runs) would drop measured
steps off its stride: the measured steps get a source of their own, thinned on their own count.
Rows already drawn are never rewritten (see :meth:`~lipschitz_lab.ui.figures.RunFigures.add_steps`).
"""
from __future__ import annotations

import math
from typing import Any

from bokeh.models import ColumnDataSource, HoverTool

from lipschitz_lab.ui.axes import legend_outside
from lipschitz_lab.ui.columns import arrays, curvature_columns, edge_limit
from lipschitz_lab.ui.run_plots import new_figure

Record = dict[str, Any]

#: gradient descent's edge of stability: lr·λ_max above it grows the error along the top eigenvector
GD_EDGE = 2.0
#: the keys of the stability figures in RunFigures
STABILITY_FIGURES = ("edge", "curv")


def limit_columns(limit: float | None) -> dict[str, list]:
    """The run's own edge limit as a line (y, label) where it is not gradient descent's 2."""
    if limit is None or not math.isfinite(limit) or abs(limit - GD_EDGE) < 1e-9:
        return {"y": [], "label": []}
    return {"y": [limit], "label": [f"{limit:.3g}: this run's edge (momentum)"]}


class Stability:
    """The measured steps (``source``: :data:`~lipschitz_lab.ui.columns.CURVATURE_COLUMNS`) and the
    run's edge limit (``limit``), and the two figures that draw them."""

    def __init__(self, max_points: int):
        self.max_points = max_points
        self.source = ColumnDataSource(curvature_columns([]))
        self.limit = ColumnDataSource(limit_columns(None))
        self.stride, self._rows, self._seen = 1, 0, 0

    def figures(self, steps: ColumnDataSource, size: dict, steps_x) -> dict:
        """The edge figure and the rates figure (x shared with the other step figures)."""
        C, f = self.source, {}
        p = f["edge"] = new_figure("edge", "step", "lr·λ_max", size, y_log=True, x_range=steps_x)
        r = p.scatter("step", "edge", source=C, size=7, color="#1f77b4", legend_label="lr·λ_max (measured)")
        p.hspan(y=[GD_EDGE], line_color="#d62728", line_dash="dashed", line_width=1.5,
                legend_label="2: unstable above (GD)")
        p.hspan(y="y", source=self.limit, line_color="#ff7f0e", line_dash="dotdash", line_width=2,
                legend_field="label")
        p.add_tools(HoverTool(renderers=[r], tooltips=[("step", "@step"), ("lr·λ_max", "@edge{0.000}"),
                                                       ("λ_max", "@lambda_max{0.000e}"), ("lr", "@lr{0.000e}")]))
        legend_outside(p)
        p = f["curv"] = new_figure("curv", "step", "rate", size, y_log=True, x_range=steps_x)
        p.line("step", "lr", source=steps, color="#2ca02c", line_width=2, legend_label="lr (in use)")
        p.line("step", "inv_L", source=steps, color="#d62728", line_width=2, line_dash="dashed",
               legend_label="1/L")
        r = p.scatter("step", "inv_lambda", source=C, marker="diamond", size=9, color="#9467bd",
                      legend_label="1/λ_max (measured)")
        p.add_tools(HoverTool(renderers=[r], tooltips=[("step", "@step"), ("1/λ_max", "@inv_lambda{0.000e}"),
                                                       ("lr", "@lr{0.000e}")]))
        legend_outside(p)
        return f

    def reset(self) -> None:
        """Empty both sources (before a run starts)."""
        self.stride, self._rows, self._seen = 1, 0, 0
        self.source.data = curvature_columns([])
        self.limit.data = limit_columns(None)

    def load(self, steps: list[Record]) -> None:
        """A whole run at once; more than ``max_points`` measured steps are thinned evenly."""
        measured = [r for r in steps if r.get("lambda_max") is not None]
        self.stride = max(1, math.ceil(len(measured) / self.max_points))
        self.source.data = curvature_columns(measured[::self.stride])
        self.limit.data = limit_columns(edge_limit(steps))

    def first_look(self, records: list[Record]) -> None:
        """A run's first step records: its edge limit's line (set once per run)."""
        self.limit.data = limit_columns(edge_limit(records))

    def add(self, records: list[Record]) -> None:
        """Stream the measured steps among ``records`` in; the stride doubles every ``max_points`` rows."""
        kept = []
        for r in records:
            if r.get("lambda_max") is None:
                continue
            if self._seen % self.stride == 0:
                kept.append(r)
                self._rows += 1
                if self._rows >= self.max_points:
                    self.stride, self._rows = self.stride * 2, 0
            self._seen += 1
        if kept:
            self.source.stream(arrays(curvature_columns(kept)))
