"""What the derivation panel draws: |∂E/∂z| over z with the paper's and the derived
supremum, and the second-derivative (smoothness) plot with S₂ and its witness.

Every number drawn comes from generated or derived expressions: |∂E/∂z| from
:func:`lipschitz_lab.bounds.derivative`, its supremum from
:func:`lipschitz_lab.bounds.supremum`, the paper's level from the derivation's
``paper_sup`` evaluated with SymPy.  The second derivative is torch autograd
through the generated functions (the generated ∂E/∂z for an elementwise loss; the
generated batch loss, :func:`lipschitz_lab.losses.generated_criterion`, for a
softmax loss, whose Hessian's spectral norm is drawn along a 1-D slice of the
logits); S₂ is :func:`lipschitz_lab.bounds.smoothness_bound`.

Which |∂E/∂z| curves: one per value of each finite variable (t, or bce's y); other
variables sit at the lower end of their interval (mse's y = -y_norm) or at 0 on
the real line (softmax's r = 0).  When a witness exists, its parameters are the
plot's, and if its point lies on none of those curves, its own curve is added
(dashed), so the marker always sits on a drawn line.
"""
from __future__ import annotations

import math
from typing import Any

import sympy as sp

from lipschitz_lab import bounds
from lipschitz_lab.symbolic import derive
from lipschitz_lab.symbolic.render import witness_text
from lipschitz_lab.symbolic.symbols import PARAMS

#: parameters of the plot when the loss has no witness (m = 1 keeps the numbers readable)
PLOT_PARAMS = {"m": 1, "k": 10, "K_a": 2, "y_norm": 1, "eps": 0.1, "K_z": 1}
#: z range where z is unbounded
Z_SPAN = 6.0
POINTS = 401
MAX_CURVES = 6


def _value(expr, params: dict[str, Any]) -> float:
    subs = {PARAMS[k]: v for k, v in params.items() if k in PARAMS}
    return float(sp.N(sp.sympify(expr).subs(subs)))


def _z_range(spec, params: dict, wit: dict | None) -> tuple[float, float]:
    zvar = next(v for v in spec.variables if v.symbol == spec.wrt)
    if zvar.discrete:
        lo, hi = -Z_SPAN, Z_SPAN
    else:
        lo = _value(zvar.lo, params) if zvar.lo != -sp.oo else -Z_SPAN
        hi = _value(zvar.hi, params) if zvar.hi != sp.oo else Z_SPAN
    zname = str(spec.wrt)
    if wit and zname in wit["point"] and zvar.hi == sp.oo:
        zw = float(wit["point"][zname])
        lo, hi = min(lo, zw - 1), max(hi, zw + 1)
    return lo, hi


def _combos(spec, params: dict, wit: dict | None) -> tuple[list[dict], dict | None]:
    """The other coordinates, one dict per curve; and the witness's own, when no curve has them."""
    combos: list[dict[str, float]] = [{}]
    for v in spec.variables:
        if v.symbol == spec.wrt:
            continue
        if v.discrete:
            values = [float(x) for x in v.values]
        elif v.lo != -sp.oo:
            values = [_value(v.lo, params)]
        else:
            values = [0.0]
        combos = [dict(c, **{str(v.symbol): x}) for c in combos for x in values]
    combos = combos[:MAX_CURVES]
    extra = None
    if wit:
        at = {k: float(v) for k, v in wit["point"].items() if k != str(spec.wrt)}
        if at and at not in combos:
            combos.append(at)
            extra = at
    return combos, extra


def grid(lo: float, hi: float, n: int = POINTS) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def plot_setup(name: str) -> dict[str, Any]:
    """What to draw for one loss: params, z grid, |∂E/∂z| curves, levels and the witness marker."""
    d = derive(name)
    spec, wit = d.spec, d.witness
    params = dict(PLOT_PARAMS, **(wit["params"] if wit else {}))
    fn, argnames = bounds.derivative(name)
    zname = str(spec.wrt)
    lo, hi = _z_range(spec, params, wit)
    combos, extra = _combos(spec, params, wit)
    zs = grid(lo, hi)
    curves = []
    for combo in combos:
        args = {**params, **combo}
        ys = [abs(fn(**{a: (z if a == zname else args[a]) for a in argnames})) for z in zs]
        label = ", ".join(f"{k} = {v:g}" for k, v in combo.items()) or "|dE/dz|"
        curves.append({"label": label + (" (witness)" if combo is extra else ""), "z": zs, "y": ys,
                       "dash": "dashed" if combo is extra else "solid"})
    sup = float(bounds.supremum(name, **params))
    paper = _value(d.paper_sup, params) if d.paper_sup is not None else math.nan
    marker = None
    if wit:
        marker = {"z": float(wit["point"][zname]), "y": float(wit["derivative"]), "text": witness_text(wit)}
    return {"name": name, "params": params, "z": (lo, hi), "curves": curves, "sup": sup, "paper": paper,
            "marker": marker}
