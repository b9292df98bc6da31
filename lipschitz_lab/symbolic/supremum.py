r"""The supremum of :math:`|f|` over a box, computed the calculus way.

For a differentiable ``f`` on a product of intervals and finite sets, the
supremum of ``|f|`` is reached at an interior critical point, on a face of the
box, or in a limit at an infinite end.  So:

1. every finite-set variable is enumerated;
2. interior critical points come from ``solve(grad f = 0)``, kept when they
   provably lie in the box;
3. each face fixes one variable at an end (``subs`` for a finite end,
   ``limit`` for an infinite one) and recurses on the rest.

Every candidate keeps the point it came from, so the winner doubles as the
place to look for a witness.  The winner is the candidate whose |value| is
provably at least ``±`` every other candidate; if no candidate provably
dominates, the supremum is left as ``Max`` of the candidates.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy as sp

from lipschitz_lab.symbolic.domain import Var
from lipschitz_lab.symbolic.proofs import abs_value, is_nonnegative


@dataclass(frozen=True)
class Candidate:
    value: sp.Expr                      # signed value of f there
    point: tuple                        # ((symbol, value), ...); value may be ±oo (a limit)
    how: str                            # "critical point", "boundary", "limit"

    @property
    def point_dict(self) -> dict:
        return dict(self.point)

    @property
    def is_limit(self) -> bool:
        return any(v in (sp.oo, -sp.oo) for _, v in self.point)


@dataclass
class Supremum:
    value: sp.Expr                        # sup |f|
    best: Candidate | None                # where it is reached (or approached)
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def attained(self) -> bool:
        return self.best is not None and not self.best.is_limit


def _inside(value: sp.Expr, var: Var) -> bool:
    if not value.is_real and value.is_real is not None:
        return False
    if value.has(sp.I) or value.has(sp.zoo, sp.nan):
        return False
    lo_ok = var.lo is -sp.oo or is_nonnegative(value - var.lo) is True
    hi_ok = var.hi is sp.oo or is_nonnegative(var.hi - value) is True
    return lo_ok and hi_ok


def _representative(sol: dict, cvars: list[Var]) -> dict | None:
    """One point of a family of critical points (e.g. ``{r: z}`` when f depends on z - r).

    grad f = 0 all along a connected family, so f is constant on it and one
    point stands for all: each free variable goes to 0 when 0 is in its
    interval, else to a finite end.
    """
    free = [v for v in cvars if v.symbol not in sol]
    pick = {}
    for v in free:
        if v.discrete:
            return None
        zero_inside = (v.lo is -sp.oo or is_nonnegative(-v.lo)) and (v.hi is sp.oo or is_nonnegative(v.hi))
        pick[v.symbol] = sp.S(0) if zero_inside else (v.lo if v.lo is not -sp.oo else v.hi)
    return {**pick, **{s: sp.simplify(sp.sympify(e).subs(pick)) for s, e in sol.items()}}


def _continuous_candidates(f, cvars: list[Var], point: tuple, notes: list[str]):
    f = sp.simplify(f)
    if not cvars:
        yield Candidate(f, point, "boundary")
        return
    symbols = [v.symbol for v in cvars]
    if f.free_symbols & set(symbols):
        # 1) interior critical points
        grads = [sp.diff(f, s) for s in symbols]
        try:
            solutions = sp.solve(grads, symbols, dict=True)
        except NotImplementedError:
            solutions = []
            notes.append(f"solve could not find critical points of {f}; faces only")
        for sol in solutions:
            sol = _representative(sol, cvars)
            if sol is None:
                continue
            if all(_inside(sp.simplify(sol[v.symbol]), v) for v in cvars):
                yield Candidate(sp.simplify(f.subs(sol)),
                                point + tuple((s, sol[s]) for s in symbols), "critical point")
    # 2) faces: fix one variable at an end, recurse on the others
    for i, var in enumerate(cvars):
        rest = cvars[:i] + cvars[i + 1:]
        for end in (var.lo, var.hi):
            if end in (sp.oo, -sp.oo):
                g = sp.limit(f, var.symbol, end)
            else:
                g = f.subs(var.symbol, end)
            if g.has(sp.nan, sp.zoo) or g.has(sp.AccumBounds):
                notes.append(f"limit of {f} at {var.symbol} -> {end} is undefined; skipped")
                continue
            yield from _continuous_candidates(g, rest, point + ((var.symbol, end),), notes)


def candidates(f: sp.Expr, variables: list[Var], notes: list[str] | None = None) -> list[Candidate]:
    """Every candidate extremum of ``f`` over the box, deduplicated."""
    notes = [] if notes is None else notes
    g = f.rewrite(sp.exp)
    discrete = [v for v in variables if v.discrete]
    continuous = [v for v in variables if not v.discrete]
    out: dict = {}
    for combo in itertools.product(*(v.values for v in discrete)):
        fixed = tuple((v.symbol, sp.S(val)) for v, val in zip(discrete, combo))
        h = g.subs(dict(fixed))
        for cand in _continuous_candidates(h, continuous, fixed, notes):
            key = (cand.value, tuple(sorted((str(s), str(v)) for s, v in cand.point)))
            out.setdefault(key, cand)
    return list(out.values())


def supremum_abs(f: sp.Expr, variables: list[Var]) -> Supremum:
    """sup |f| over the domain of ``variables`` (a SymPy expression in the parameters)."""
    notes: list[str] = []
    cands = candidates(f, variables, notes)
    if not cands:
        raise ValueError(f"no candidate extremum found for {f}")
    # The winner w satisfies |w| >= c and |w| >= -c for every candidate c.
    for cand in sorted(cands, key=lambda c: (c.is_limit, sp.count_ops(c.value))):
        mag = abs_value(cand.value)
        if all(is_nonnegative(mag - o.value) and is_nonnegative(mag + o.value) for o in cands):
            return Supremum(sp.simplify(mag), cand, cands, notes)
    notes.append("no candidate provably dominates; the supremum is a Max")
    return Supremum(sp.Max(*{abs_value(c.value) for c in cands}), None, cands, notes)
