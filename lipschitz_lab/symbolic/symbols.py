"""The paper's symbols, defined once, with the assumptions SymPy reasons with.

Names are the project's vocabulary (code, JSON, docs): ``K_z``, ``K_a``,
``y_norm``, ``m``, ``k``, ``lam``, ``w_max``; ``eps`` is the label-smoothing
weight of the fourth loss.
"""
from __future__ import annotations

import sympy as sp

# --- parameters of a bound -------------------------------------------------
K_z = sp.Symbol("K_z", nonnegative=True)       # bound on the penultimate activations
K_a = sp.Symbol("K_a", positive=True)          # bound on the output activation (mse)
y_norm = sp.Symbol("y_norm", nonnegative=True)  # bound on the targets (mse)
m = sp.Symbol("m", positive=True, integer=True)  # batch size
k = sp.Symbol("k", positive=True, integer=True)  # number of classes
lam = sp.Symbol("lam", nonnegative=True)       # L2 weight decay
w_max = sp.Symbol("w_max", nonnegative=True)   # largest weight norm
eps = sp.Symbol("eps", nonnegative=True)       # label smoothing

#: where each parameter lives: (lower, upper); used to prove inequalities.
PARAM_RANGES: dict[sp.Symbol, tuple[sp.Expr, sp.Expr]] = {
    K_z: (sp.S(0), sp.oo),
    K_a: (sp.S(0), sp.oo),
    y_norm: (sp.S(0), sp.oo),
    m: (sp.S(1), sp.oo),
    k: (sp.S(2), sp.oo),
    lam: (sp.S(0), sp.oo),
    w_max: (sp.S(0), sp.oo),
    eps: (sp.S(0), sp.S(1)),
}

#: the parameter symbols by name (the JSON and CLI vocabulary)
PARAMS: dict[str, sp.Symbol] = {str(s): s for s in PARAM_RANGES}

# --- variables a derivative depends on -------------------------------------
z = sp.Symbol("z", real=True)    # last-layer pre-activation (the unit p under study)
r = sp.Symbol("r", real=True)    # log-sum-exp of the other k-1 logits
y = sp.Symbol("y", real=True)    # target
t = sp.Symbol("t", real=True)    # [y = p], the Iverson bracket of eq. 16
c = sp.Symbol("c", real=True)    # terms of E that do not depend on z
a = sp.Symbol("a", real=True)    # output activation (eq. 8)
b = sp.Symbol("b", real=True)    # second output activation (eq. 8)
w = sp.Symbol("w", real=True)    # one weight (weight-decay term)
lse = sp.Symbol("lse", real=True)  # log-sum-exp of all k logits of a sample (softmax criteria)
