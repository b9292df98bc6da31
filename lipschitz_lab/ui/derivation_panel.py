"""The derivation panel: a loss's steps in LaTeX, the paper's claim beside the derived
supremum, the verdict and its witness, and |∂E/∂z| drawn over z.

Every number drawn comes from generated or derived expressions: the curve
from :func:`lipschitz_lab.bounds.derivative`, the derived level from
:func:`lipschitz_lab.bounds.supremum`, the paper's level from the derivation's
``paper_sup`` evaluated with SymPy at the same parameters.

Which curves: one per value of each finite variable (t, or bce's y); other
variables sit at the lower end of their interval (mse's y = -y_norm) or at 0
on the real line (softmax's r = 0).  When a witness exists, its parameters are
the plot's, and if its point lies on none of those curves, its own curve is
added (dashed), so the marker always sits on a drawn line.
"""
from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as widgets
import sympy as sp
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from jupyter_bokeh import BokehModel

from lipschitz_lab import bounds
from lipschitz_lab.symbolic import LOSS_SPECS, derive
from lipschitz_lab.symbolic.render import to_latex, witness_text
from lipschitz_lab.symbolic.symbols import PARAMS
from lipschitz_lab.ui._bridge import load_bokehjs

#: parameters of the plot when the loss has no witness (m = 1 keeps the numbers readable)
PLOT_PARAMS = {"m": 1, "k": 10, "K_a": 2, "y_norm": 1, "eps": 0.1, "K_z": 1}
#: z range where z is unbounded
Z_SPAN = 6.0
POINTS = 401
MAX_CURVES = 6


def _value(expr, params: dict[str, Any]) -> float:
    subs = {PARAMS[k]: v for k, v in params.items() if k in PARAMS}
    return float(sp.N(sp.sympify(expr).subs(subs)))


def plot_setup(name: str) -> dict[str, Any]:
    """What to draw for one loss: params, z grid, curves, levels and the witness marker."""
    d = derive(name)
    spec = d.spec
    wit = d.witness
    params = dict(PLOT_PARAMS, **(wit["params"] if wit else {}))
    fn, argnames = bounds.derivative(name)
    zname = str(spec.wrt)

    # 1) z range
    zvar = next(v for v in spec.variables if v.symbol == spec.wrt)
    lo, hi = (-Z_SPAN, Z_SPAN) if zvar.discrete else (_value(zvar.lo, params) if zvar.lo != -sp.oo else -Z_SPAN,
                                                      _value(zvar.hi, params) if zvar.hi != sp.oo else Z_SPAN)
    if wit and zname in wit["point"] and zvar.hi == sp.oo:
        zw = float(wit["point"][zname])
        lo, hi = min(lo, zw - 1), max(hi, zw + 1)

    # 2) the other coordinates: one curve per combination
    combos: list[dict[str, float]] = [{}]
    for v in spec.variables:
        if v.symbol == spec.wrt:
            continue
        s = str(v.symbol)
        if v.discrete:
            values = [float(x) for x in v.values]
        elif v.lo != -sp.oo:
            values = [_value(v.lo, params)]
        else:
            values = [0.0]
        combos = [dict(c, **{s: x}) for c in combos for x in values]
    combos = combos[:MAX_CURVES]
    extra = None          # the witness's own coordinates, when no curve above has them
    if wit:
        at = {k: float(v) for k, v in wit["point"].items() if k != zname}
        if at and at not in combos:
            combos.append(at)
            extra = at

    zs = [lo + (hi - lo) * i / (POINTS - 1) for i in range(POINTS)]
    curves = []
    for combo in combos:
        args = {**params, **combo}
        ys = [abs(fn(**{a: (z if a == zname else args[a]) for a in argnames})) for z in zs]
        label = ", ".join(f"{k} = {v:g}" for k, v in combo.items()) or "|dE/dz|"
        witness_curve = combo is extra
        curves.append({"label": label + (" (witness)" if witness_curve else ""), "z": zs, "y": ys,
                       "dash": "dashed" if witness_curve else "solid"})

    sup = float(bounds.supremum(name, **params))
    paper = _value(d.paper_sup, params) if d.paper_sup is not None else math.nan
    marker = None
    if wit:
        marker = {"z": float(wit["point"][zname]), "y": float(wit["derivative"]), "text": witness_text(wit)}
    return {"name": name, "params": params, "z": (lo, hi), "curves": curves, "sup": sup, "paper": paper,
            "marker": marker}


def _verdict(d) -> str:
    if d.paper_holds is None:
        return "<b>no verdict</b>: " + html.escape(d.paper_proof)
    word = "<b style='color:#2ca02c'>holds</b>" if d.paper_holds else "<b style='color:#d62728'>fails</b>"
    return f"{word}: {html.escape(d.paper_proof)}"


class DerivationPanel(widgets.VBox):
    """A loss dropdown, its derivation in LaTeX, the verdict and a plot of |∂E/∂z|."""

    def __init__(self, loss: str = "softmax_ce"):
        self.loss = widgets.Dropdown(options=list(LOSS_SPECS), value=loss, description="loss")
        self.title = widgets.HTML()
        self.latex = widgets.HTMLMath()
        self.claim = widgets.HTMLMath()
        self.curves = ColumnDataSource({"xs": [], "ys": [], "label": [], "color": [], "dash": []})
        self.derived_level = ColumnDataSource({"x0": [], "x1": [], "y": []})
        self.paper_level = ColumnDataSource({"x0": [], "x1": [], "y": []})
        self.witness = ColumnDataSource({"z": [], "y": [], "text": []})
        self.plot = self._figure()
        load_bokehjs()
        self.bokeh = BokehModel(self.plot)
        self.setup: dict[str, Any] = {}
        self.loss.observe(lambda change: self.show(change["new"]), names="value")
        self.show(loss)
        super().__init__(children=[self.loss, self.title, self.latex, self.claim, self.bokeh])
        self.add_class("lipschitz-derivation-panel")

    def _figure(self):
        p = figure(title="|∂E/∂z| over z", width=820, height=340, x_axis_label="z",
                   y_axis_label="|∂E/∂z|", tools="pan,box_zoom,wheel_zoom,reset,save")
        p.multi_line("xs", "ys", source=self.curves, color="color", line_dash="dash", line_width=2,
                     legend_field="label")
        p.segment("x0", "y", "x1", "y", source=self.derived_level, color="#2ca02c", line_width=2,
                  line_dash="dotdash", legend_label="derived sup |∂E/∂z|")
        p.segment("x0", "y", "x1", "y", source=self.paper_level, color="#ff7f0e", line_width=2,
                  line_dash="dashed", legend_label="the paper's value")
        r = p.scatter("z", "y", source=self.witness, marker="x", size=16, line_width=3, color="#d62728",
                      legend_label="witness: the paper fails here")
        p.add_tools(HoverTool(renderers=[r], tooltips=[("witness", "@text")]))
        p.legend.label_text_font_size = "8pt"
        p.add_layout(p.legend[0], "right")      # beside the plot: the curves reach every corner
        return p

    def show(self, name: str) -> None:
        """Display loss ``name`` (the dropdown calls this)."""
        d = derive(name)
        s = plot_setup(name)
        self.setup = s
        self.title.value = f"<h3>{html.escape(d.spec.title)}</h3>"
        self.latex.value = "$$" + to_latex(d) + "$$"
        paper = (r"$$\sup\left|\frac{\partial E}{\partial z}\right|_\text{paper} = %s"
                 r"\qquad\text{derived: } %s$$" % (sp.latex(d.paper_sup), sp.latex(d.sup.value))
                 if d.paper_sup is not None else
                 r"The paper makes no claim for this loss; derived $\sup|\partial E/\partial z| = %s$"
                 % sp.latex(d.sup.value))
        self.claim.value = (paper + f"<p>Verdict: {_verdict(d)}</p>"
                            f"<p>Witness: {html.escape(witness_text(d.witness))}</p>")
        lo, hi = s["z"]
        colors = [Category10_10[i % 10] for i in range(len(s["curves"]))]
        self.curves.data = {"xs": [c["z"] for c in s["curves"]], "ys": [c["y"] for c in s["curves"]],
                            "label": [c["label"] for c in s["curves"]], "color": colors,
                            "dash": [c["dash"] for c in s["curves"]]}
        params = ", ".join(f"{k} = {v:g}" for k, v in s["params"].items() if k in _used(d))
        self.derived_level.data = {"x0": [lo], "x1": [hi], "y": [s["sup"]]}
        self.paper_level.data = {"x0": [lo], "x1": [hi], "y": [s["paper"]]} if not math.isnan(s["paper"]) else \
            {"x0": [], "x1": [], "y": []}
        m = s["marker"]
        self.witness.data = {"z": [m["z"]], "y": [m["y"]], "text": [m["text"]]} if m else \
            {"z": [], "y": [], "text": []}
        paper = f", paper's value {s['paper']:.4g}" if not math.isnan(s["paper"]) else ""
        self.plot.title.text = f"|∂E/∂z| of {name} over z ({params}): sup {s['sup']:.4g}{paper}"


def _used(d) -> set[str]:
    syms = d.derivative.free_symbols | d.sup.value.free_symbols
    if d.paper_sup is not None:
        syms |= d.paper_sup.free_symbols
    return {str(s) for s in syms}


def derivation_panel(loss: str = "softmax_ce") -> DerivationPanel:
    """The derivation panel; show it as the last expression of a cell."""
    return DerivationPanel(loss)
