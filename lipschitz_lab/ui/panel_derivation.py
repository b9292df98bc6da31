"""The derivation panel: a loss's steps in LaTeX, the paper's claim beside the derived
supremum, the verdict and its witness, |∂E/∂z| drawn over z, and the smoothness plot
(∂²E/∂z², or a softmax Hessian's spectral norm) against S₂.

What is drawn comes from :mod:`lipschitz_lab.ui.derivation_plots` and
:mod:`lipschitz_lab.ui.smoothness_plot` (generated and derived expressions only).

The plots are filled, and their ranges set to the data, before the Bokeh model is
handed to the notebook: a ``jupyter_bokeh`` widget renders the document as it was
when the widget was made, and data set before its view exists never reaches the
browser (the plot stayed empty, with "could not set initial ranges", until the
loss was changed).
"""
from __future__ import annotations

import html
import math
import re
from typing import Any

import ipywidgets as widgets
import sympy as sp
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, HoverTool, Range1d
from bokeh.plotting import figure

from lipschitz_lab import bounds
from lipschitz_lab.symbolic import LOSS_SPECS, derive
from lipschitz_lab.symbolic.render import to_latex, witness_text
from lipschitz_lab.ui._bridge import load_bokehjs
from lipschitz_lab.ui.axes import fitted_range, legend_outside
from lipschitz_lab.ui.bokeh_widget import OneWayBokeh
from lipschitz_lab.ui.derivation_plots import PLOT_PARAMS, plot_setup
from lipschitz_lab.ui.smoothness_plot import smoothness_setup

__all__ = ["DerivationPanel", "derivation_panel", "plot_setup", "PLOT_PARAMS"]

#: curve colours: Category10 without the levels' green and orange and the witness's red
CURVE_COLORS = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
EMPTY_CURVES = {"xs": [], "ys": [], "label": [], "color": [], "dash": []}
EMPTY_LEVEL = {"x0": [], "x1": [], "y": []}
EMPTY_POINTS = {"z": [], "y": [], "text": []}
#: why a gradient bound is not a step size (issue 23), and where to watch the difference
STEP_SIZE_NOTE = (
    "<p class='lipschitz-step-size-note'><b>Why L is not a step size.</b> A gradient bound such as the "
    "paper's L bounds |∂E/∂w|, the gradient's size, but how far a step may safely go is set by the curvature, "
    "the Hessian's top eigenvalue λ<sub>max</sub>: gradient descent is stable only while "
    "lr·λ<sub>max</sub> &lt; 2 (2(1+μ) with heavy-ball momentum), whatever L says. "
    "Watch it in the <i>Live training</i> tab: set <i>sharpness every</i> N steps (the CLI's "
    "<code>--sharpness-every N</code>) and its stability figure draws lr·λ<sub>max</sub> against 2, "
    "beside lr, 1/L and 1/λ<sub>max</sub>.</p>")


def _verdict(d) -> str:
    if d.paper_holds is None:
        return "<b>no verdict</b>: " + html.escape(d.paper_proof)
    word = "<b style='color:#2ca02c'>holds</b>" if d.paper_holds else "<b style='color:#d62728'>fails</b>"
    return f"{word}: {html.escape(d.paper_proof)}"


def _used(d) -> set[str]:
    syms = d.derivative.free_symbols | d.sup.value.free_symbols
    if d.paper_sup is not None:
        syms |= d.paper_sup.free_symbols
    return {str(s) for s in syms}


def _curves(curves: list[dict]) -> dict[str, list]:
    return {"xs": [c["z"] for c in curves], "ys": [c["y"] for c in curves],
            "label": [c["label"] for c in curves], "dash": [c["dash"] for c in curves],
            "color": [CURVE_COLORS[i % len(CURVE_COLORS)] for i in range(len(curves))]}


def _points(markers: list[dict]) -> dict[str, list]:
    return {"z": [m["z"] for m in markers], "y": [m["y"] for m in markers], "text": [m["text"] for m in markers]}


def _set_ranges(p, lo: float, hi: float, ys: list[float], marks: list[dict] = ()) -> None:
    """x over the z grid, widened where a marker sits on its edge (half of it would be cut off);
    y from 0 to a little above the highest curve, level or marker."""
    pad = 0.03 * (hi - lo)
    zs = [m["z"] for m in marks]
    p.x_range.update(start=min([lo] + [z - pad for z in zs if z - pad < lo]),
                     end=max([hi] + [z + pad for z in zs if z + pad > hi]))
    values = [y for y in list(ys) + [m["y"] for m in marks] if math.isfinite(y)]
    top = max([fitted_range(values, pad=0.08)[1]] + [1.08 * y for y in values])    # a flat curve too
    p.y_range.update(start=0.0, end=top if top > 0 else 1.0)


def _plot(title: str, x_label: str, y_label: str, curves, level, level_label: str, points, point_label: str,
          paper=None):
    """Curves over z, a dash-dotted level (and the paper's, dashed) and x markers; legend beside the frame."""
    p = figure(title=title, width=900, height=340, x_axis_label=x_label, y_axis_label=y_label,
               x_range=Range1d(0, 1), y_range=Range1d(0, 1), tools="pan,box_zoom,wheel_zoom,reset,save")
    p.multi_line("xs", "ys", source=curves, color="color", line_dash="dash", line_width=2, legend_field="label")
    p.segment("x0", "y", "x1", "y", source=level, color="#2ca02c", line_width=2, line_dash="dotdash",
              legend_label=level_label)
    if paper is not None:
        p.segment("x0", "y", "x1", "y", source=paper, color="#ff7f0e", line_width=2, line_dash="dashed",
                  legend_label="the paper's value")
    r = p.scatter("z", "y", source=points, marker="x", size=16, line_width=3, color="#d62728",
                  legend_label=point_label)
    p.add_tools(HoverTool(renderers=[r], tooltips=[("witness", "@text")]))
    legend_outside(p)      # beside the plot: the curves reach every corner
    return p


class DerivationPanel(widgets.VBox):
    """A loss dropdown, its derivation in LaTeX, the verdict, |∂E/∂z| and the smoothness plot."""

    def __init__(self, loss: str = "softmax_ce"):
        self.loss = widgets.Dropdown(options=list(LOSS_SPECS), value=loss, description="loss")
        self.title, self.latex, self.claim = widgets.HTML(), widgets.HTMLMath(), widgets.HTMLMath()
        self.smooth_text = widgets.HTMLMath()
        self.step_note = widgets.HTML(STEP_SIZE_NOTE)
        self.curves = ColumnDataSource(dict(EMPTY_CURVES))
        self.derived_level = ColumnDataSource(dict(EMPTY_LEVEL))
        self.paper_level = ColumnDataSource(dict(EMPTY_LEVEL))
        self.witness = ColumnDataSource(dict(EMPTY_POINTS))
        self.smooth_curves = ColumnDataSource(dict(EMPTY_CURVES))
        self.smooth_level = ColumnDataSource(dict(EMPTY_LEVEL))
        self.smooth_witness = ColumnDataSource(dict(EMPTY_POINTS))
        self.plot = _plot("|∂E/∂z| over z", "z", "|∂E/∂z|", self.curves, self.derived_level,
                          "derived sup |∂E/∂z|", self.witness, "witness: the paper fails here", self.paper_level)
        self.smooth_plot = _plot("∂²E/∂z² over z", "z", "|∂²E/∂z²|", self.smooth_curves, self.smooth_level,
                                 "S₂ (derived sup)", self.smooth_witness, "witness")
        self.setup: dict[str, Any] = {}
        self.smooth_setup: dict[str, Any] | None = None
        self.show(loss)                          # 1) data and ranges first,
        load_bokehjs()
        self.bokeh = OneWayBokeh(column(self.plot, self.smooth_plot))   # 2) then the widget renders them
        self.loss.observe(lambda change: self.show(change["new"]), names="value")
        super().__init__(children=[self.loss, self.title, self.latex, self.claim, self.smooth_text, self.step_note,
                                   self.bokeh])
        self.add_class("lipschitz-derivation-panel")

    def show(self, name: str) -> None:
        """Display loss ``name`` (the dropdown calls this)."""
        d = derive(name)
        self.setup = plot_setup(name)
        self.title.value = f"<h3>{html.escape(d.spec.title)}</h3>"
        self.latex.value = "$$" + _tex(to_latex(d)) + "$$"
        self.claim.value = _tex(self._claim(d))
        self._show_derivative(d, self.setup)
        self.smooth_setup = smoothness_setup(name)
        self._show_smoothness(d, self.smooth_setup)

    @staticmethod
    def _claim(d) -> str:
        paper = (r"$$\sup\left|\frac{\partial E}{\partial z}\right|_\text{paper} = %s"
                 r"\qquad\text{derived: } %s$$" % (sp.latex(d.paper_sup), sp.latex(d.sup.value))
                 if d.paper_sup is not None else
                 r"The paper makes no claim for this loss; derived $\sup|\partial E/\partial z| = %s$"
                 % sp.latex(d.sup.value))
        return (paper + f"<p>Verdict: {_verdict(d)}</p>"
                f"<p>Witness: {html.escape(witness_text(d.witness))}</p>")

    def _show_derivative(self, d, s: dict) -> None:
        lo, hi = s["z"]
        self.curves.data = _curves(s["curves"])
        self.derived_level.data = {"x0": [lo], "x1": [hi], "y": [s["sup"]]}
        has_paper = not math.isnan(s["paper"])
        self.paper_level.data = {"x0": [lo], "x1": [hi], "y": [s["paper"]]} if has_paper else dict(EMPTY_LEVEL)
        self.witness.data = _points([s["marker"]] if s["marker"] else [])
        _show_entries(self.plot, {"the paper's value": has_paper,
                                  "witness: the paper fails here": bool(s["marker"])})
        marks = [s["marker"]] if s["marker"] else []
        _set_ranges(self.plot, lo, hi, [y for c in s["curves"] for y in c["y"]] + [s["sup"]]
                    + ([s["paper"]] if has_paper else []), marks)
        params = ", ".join(f"{_name(k)} = {v:g}" for k, v in s["params"].items() if k in _used(d))
        paper = f", paper's value {s['paper']:.4g}" if has_paper else ""
        self.plot.title.text = f"|∂E/∂z| of {s['name']} over z ({params}): sup {s['sup']:.4g}{paper}"

    def _show_smoothness(self, d, s: dict | None) -> None:
        self.smooth_plot.visible = s is not None
        if s is None:
            self.smooth_text.value = "<p><i>No smoothness bound (S₂) for this loss yet.</i></p>"
            for src, empty in ((self.smooth_curves, EMPTY_CURVES), (self.smooth_level, EMPTY_LEVEL),
                               (self.smooth_witness, EMPTY_POINTS)):
                src.data = dict(empty)
            return
        lo, hi = s["z"]
        self.smooth_curves.data = _curves(s["curves"])
        self.smooth_level.data = {"x0": [lo], "x1": [hi], "y": [s["S2"]]}
        self.smooth_witness.data = _points(s["markers"])
        _show_entries(self.smooth_plot, {"witness": bool(s["markers"])})
        ys = [y for c in s["curves"] for y in c["y"]] + [s["S2"]]
        _set_ranges(self.smooth_plot, lo, hi, ys, s["markers"])
        used = set(bounds.FUNCTIONS[(s["name"], "smooth")][1]) | ({"k"} if s["kind"] == "softmax" else set())
        params = ", ".join(f"{_name(k)} = {_num(v)}" for k, v in s["params"].items() if k in used)
        self.smooth_plot.title.text = f"{s['what']} of {s['name']} ({params}): S₂ = {s['S2']:.4g}"
        self.smooth_plot.xaxis.axis_label = s["x_label"]
        self.smooth_plot.yaxis.axis_label = s["y_label"]
        how = ("attained" if s["attained"] else "approached in a limit") if s["tight"] else "an upper bound"
        self.smooth_text.value = (r"<p>Smoothness: $S_2 = \sup\|\nabla^2_z E\|_2 = %s$ (%s; %s).</p>"
                                  % (_tex(sp.latex(s["value"])), html.escape(s["method"]), how))


def _name(symbol: str) -> str:
    """A parameter as a reader writes it: ε, not "eps"."""
    return "\u03b5" if symbol == "eps" else symbol


def _tex(latex: str) -> str:
    """SymPy writes the symbol eps as ``eps``, which MathJax sets as e·p·s: ``\\varepsilon``."""
    return re.sub(r"(?<![\\A-Za-z])eps(?![A-Za-z])", r"\\varepsilon", latex)


def _show_entries(p, shown: dict[str, bool]) -> None:
    """Legend entries whose glyphs draw nothing for this loss (no paper value, no witness) are hidden."""
    for item in p.legend[0].items:
        label = item.label.get("value") if isinstance(item.label, dict) else \
            getattr(item.label, "value", None)
        if label in shown:
            item.visible = shown[label]


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def derivation_panel(loss: str = "softmax_ce") -> DerivationPanel:
    """The derivation panel; show it as the last expression of a cell."""
    return DerivationPanel(loss)
