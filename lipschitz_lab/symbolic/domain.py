"""Where a derivative's inputs live: intervals (possibly infinite) and finite sets."""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class Var:
    """One input of a derivative and its domain.

    An interval ``[lo, hi]`` (ends may be ``-oo``/``oo`` and may involve
    parameters such as ``K_a``), or a finite set ``values`` (labels).
    """

    symbol: sp.Symbol
    lo: sp.Expr | None = None
    hi: sp.Expr | None = None
    values: tuple | None = None
    meaning: str = ""

    def __post_init__(self):
        if self.values is None and (self.lo is None or self.hi is None):
            raise ValueError(f"Var {self.symbol}: give lo and hi, or values")

    @property
    def discrete(self) -> bool:
        return self.values is not None

    def latex(self) -> str:
        if self.discrete:
            return r"%s \in \{%s\}" % (sp.latex(self.symbol), ", ".join(sp.latex(sp.S(v)) for v in self.values))
        lb = "(" if self.lo in (sp.oo, -sp.oo) else "["
        rb = ")" if self.hi in (sp.oo, -sp.oo) else "]"
        return r"%s \in %s%s, %s%s" % (sp.latex(self.symbol), lb, sp.latex(self.lo), sp.latex(self.hi), rb)

    def text(self) -> str:
        if self.discrete:
            return f"{self.symbol} in {{{', '.join(str(v) for v in self.values)}}}"
        return f"{self.symbol} in [{self.lo}, {self.hi}]"


def interval(symbol, lo, hi, meaning="") -> Var:
    return Var(symbol, sp.sympify(lo), sp.sympify(hi), None, meaning)


def real_line(symbol, meaning="") -> Var:
    return Var(symbol, -sp.oo, sp.oo, None, meaning)


def finite(symbol, values, meaning="") -> Var:
    return Var(symbol, None, None, tuple(values), meaning)
