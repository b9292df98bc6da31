"""Deciding ``expr >= 0`` for every admissible value of the parameters.

Each parameter ``p`` with range ``[lo, hi]`` is replaced by a nonnegative
symbol ``s``: ``p = lo + s`` when ``hi`` is infinite, ``p = lo + (hi-lo)·s/(1+s)``
otherwise.  The expression is then put over a common denominator and
factored; SymPy's sign rules decide the rest.  ``True`` is a proof, ``False``
a disproof, ``None`` means SymPy could not tell (callers then look for a
numeric witness; they never guess).
"""
from __future__ import annotations

from functools import lru_cache

import sympy as sp

from lipschitz_lab.symbolic.symbols import PARAM_RANGES


def _reparametrise(expr: sp.Expr) -> sp.Expr:
    subs = {}
    for p in expr.free_symbols & set(PARAM_RANGES):
        lo, hi = PARAM_RANGES[p]
        s = sp.Dummy(f"s_{p}", nonnegative=True)
        subs[p] = lo + s if hi is sp.oo else lo + (hi - lo) * s / (1 + s)
    return expr.subs(subs)


@lru_cache(maxsize=4096)
def is_nonnegative(expr: sp.Expr) -> bool | None:
    """Is ``expr >= 0`` for all parameters in their ranges? (True / False / None)."""
    expr = sp.sympify(expr)
    if expr.is_number:
        return bool(expr >= 0) if expr.is_real else None
    e = _reparametrise(expr)
    # the exp form decides signs that the custom functions hide, e.g. σ(x)(1 - σ(x)) >= 0
    for form in (lambda x: x, sp.factor, lambda x: sp.factor(sp.together(sp.expand(x))),
                 lambda x: sp.factor(sp.together(x.rewrite(sp.exp)))):
        verdict = form(e).is_nonnegative
        if verdict is not None:
            return verdict
    return None


def abs_value(expr: sp.Expr) -> sp.Expr:
    """|expr|, without ``Abs`` when the sign is provable."""
    if is_nonnegative(expr):
        return sp.simplify(expr)
    if is_nonnegative(-expr):
        return sp.simplify(-expr)
    return sp.Abs(expr)
