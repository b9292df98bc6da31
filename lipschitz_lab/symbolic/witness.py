"""Concrete counterexamples: a point where the derivative beats the paper's value.

Parameters are tried from a small grid until the derived supremum exceeds
the paper's claimed value there.  The candidate that attains the supremum
gives the point; an infinite coordinate (a supremum approached in a limit)
is walked out along ±1, ±2, ±4, ... until the derivative, evaluated with
30-digit arithmetic, exceeds the paper's value.
"""
from __future__ import annotations

import itertools

import sympy as sp

from lipschitz_lab.symbolic.supremum import Supremum
from lipschitz_lab.symbolic.symbols import PARAMS

#: parameter values tried, in order (m = 1 keeps the numbers readable)
GRID = {"m": (1,), "k": (10, 2, 3), "K_a": (2, 1), "y_norm": (1, sp.Rational(1, 2)),
        "eps": (sp.Rational(1, 10),), "K_z": (1,)}


def _num(expr) -> float:
    return float(sp.N(expr, 30))


def find_witness(derivative: sp.Expr, sup: Supremum, claimed: sp.Expr) -> dict | None:
    """A point (and parameters) where |derivative| > claimed, or None."""
    if sup.best is None:
        return None
    params = sorted((derivative.free_symbols | sup.value.free_symbols | claimed.free_symbols)
                    & set(PARAMS.values()), key=str)
    point = sup.best.point_dict
    f = derivative.rewrite(sp.exp)
    for combo in itertools.product(*(GRID[str(p)] for p in params)):
        pv = dict(zip(params, combo))
        claim = _num(claimed.subs(pv))
        if not _num(sup.value.subs(pv)) > claim:
            continue
        base = {s: (v.subs(pv) if v not in (sp.oo, -sp.oo) else v) for s, v in point.items()}
        # Unconstrained coordinates (absent from the point) sit at 0.
        for s in f.free_symbols - set(pv) - set(base):
            base[s] = sp.S(0)
        # Resolve coordinates given relative to others (e.g. z = r - log(k-1)).
        base = {s: (v.subs(base) if v not in (sp.oo, -sp.oo) else v) for s, v in base.items()}
        infinite = [s for s, v in base.items() if v in (sp.oo, -sp.oo)]
        for step in range(0, 40):
            x = {s: (sp.sign(base[s]) * 2 ** step if s in infinite else base[s]) for s in base}
            value = _num(f.subs(pv).subs(x))
            if abs(value) > claim:
                return {
                    "point": {str(s): _plain(v) for s, v in x.items()},
                    "params": {str(p): _plain(v) for p, v in pv.items()},
                    "derivative": value,
                    "paper_value": claim,
                    "ratio": abs(value) / claim if claim else float("inf"),
                }
            if not infinite:
                break
    return None


def _plain(v):
    v = sp.S(v)
    return int(v) if v.is_integer else float(v)
