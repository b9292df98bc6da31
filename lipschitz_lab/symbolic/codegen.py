"""Generate ``lipschitz_lab/_generated.py`` from the derivations.

The generated module is checked in, so importing the package needs no SymPy;
``tests/test_codegen.py`` fails when it differs from what this code produces
now (regenerate with ``lipschitz-lab derive --codegen`` or ``make derive``).
"""
from __future__ import annotations

from pathlib import Path

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from lipschitz_lab.symbolic.functions import sigmoid
from lipschitz_lab.symbolic.symbols import K_z, lam, w_max

GENERATED_PATH = Path(__file__).resolve().parents[1] / "_generated.py"

#: order of arguments in generated signatures (the project's vocabulary)
ARG_ORDER = ("z", "r", "t", "y", "c", "lse", "K_z", "K_a", "y_norm", "m", "k", "eps", "lam", "w_max")


class _Printer(PythonCodePrinter):
    """Python source whose elementary functions go through ``_ops``."""

    def _ops(self, name, expr):
        return "_ops.%s(%s)" % (name, ", ".join(self._print(a) for a in expr.args))

    def _print_exp(self, expr):
        return self._ops("exp", expr)

    def _print_log(self, expr):
        # the stable forms: log σ(x), log(1 - σ(x)) = log σ(-x) and log(1 + e^x) never overflow
        arg = expr.args[0]
        if isinstance(arg, sigmoid):
            return "_ops.log_sigmoid(%s)" % self._print(arg.args[0])
        if isinstance(1 - arg, sigmoid):
            return "_ops.log_sigmoid(%s)" % self._print(-(1 - arg).args[0])
        if isinstance(arg - 1, sp.exp):
            return "_ops.softplus(%s)" % self._print((arg - 1).args[0])
        return self._ops("log", expr)

    def _print_Abs(self, expr):
        return self._ops("Abs", expr)

    def _print_Max(self, expr):
        return self._ops("Max", expr)

    def _print_sigmoid(self, expr):
        return self._ops("sigmoid", expr)

    def _print_logsumexp(self, expr):
        return self._ops("logaddexp", expr)

    def _print_Pow(self, expr, rational=False):
        if expr.exp == sp.S.Half:
            return "_ops.sqrt(%s)" % self._print(expr.base)
        if expr.exp == -sp.S.Half:
            return "(1/_ops.sqrt(%s))" % self._print(expr.base)
        return super()._print_Pow(expr, rational=rational)


#: what each batch-loss piece is (binding.criterion_parts)
_PIECES = {
    "E": "batch loss = sum over samples of E(z_i, y_i)",
    "E_unit": "batch loss, unit part: summed over samples and units",
    "E_norm": "batch loss, normaliser part: summed over samples, lse = logsumexp of the logits",
}


def _args(expr: sp.Expr, always=()) -> tuple[str, ...]:
    names = {str(s) for s in expr.free_symbols} | set(always)
    unknown = names - set(ARG_ORDER)
    if unknown:
        raise ValueError(f"cannot generate code for symbols {sorted(unknown)}")
    return tuple(n for n in ARG_ORDER if n in names)


def _function(name: str, expr: sp.Expr, doc: str, always=()) -> tuple[str, tuple[str, ...]]:
    args = _args(expr, always)
    body = _Printer({"fully_qualified_modules": False}).doprint(expr)
    src = (f"def {name}({', '.join(args)}):\n"
           f"    \"\"\"{doc}: {sp.sstr(expr)}\"\"\"\n"
           f"    return {body}\n")
    return src, args


def generate_source(derivations: dict) -> str:
    """The full text of ``_generated.py`` for these derivations."""
    parts = [
        '"""Numeric functions generated from the SymPy derivations. Do not edit.\n\n'
        'Regenerate with ``lipschitz-lab derive --codegen`` (``make derive``).\n"""\n',
        "from lipschitz_lab import _ops\n",
    ]
    table: list[str] = []

    def emit(key, fname, expr, doc, always=()):
        src, args = _function(fname, expr, doc, always)
        parts.append("\n" + src)
        table.append(f"    {key!r}: ({fname}, {args!r}),\n")

    info: list[str] = []
    for name, d in derivations.items():
        emit((name, "dE_dz"), f"{name}_dE_dz", d.derivative, "dE/dz")
        emit((name, "sup"), f"{name}_sup", d.sup.value, "sup |dE/dz|", always=("m",))
        emit((name, "smooth"), f"{name}_smooth", d.smoothness.value,
             "S2 = sup ||d2E/dz2||" + ("" if d.smoothness.tight else " (an upper bound)"), always=("m",))
        for piece, expr in d.criterion.items():
            emit((name, piece), f"{name}_{piece}", expr, _PIECES[piece])
        info.append(f"    {name!r}: {d.info!r},\n")
        if d.paper_bound is not None:
            emit((name, "paper"), f"{name}_L_paper", d.paper_bound,
                 f"L as published ({d.spec.paper_equation})", always=("K_z",))
        emit((name, "corrected"), f"{name}_L_corrected", d.corrected_bound,
             "L from the derived supremum", always=("K_z",))
        for kz, expr in d.strict_bounds.items():
            emit((name, f"strict_{kz}"), f"{name}_L_strict_{kz}", expr,
                 f"rigorous bound on the last layer's gradient, K_z = {kz}", always=("K_z",))
    wd = next(iter(derivations.values())).weight_decay
    assert wd.free_symbols <= {lam, w_max, K_z}
    emit(("*", "weight_decay"), "weight_decay", wd, "lam/2 |w|^2 adds lam * w_max")
    parts.append("\n\n#: (loss, what) -> (function, argument names)\nFUNCTIONS = {\n")
    parts.extend(table)
    parts.append("}\n\n#: loss -> how the lab feeds it a batch, its task, a binary target's label values\n"
                 "LOSS_INFO = {\n")
    parts.extend(info)
    parts.append("}\n")
    return "".join(parts)


def write_generated(derivations: dict, path: Path = GENERATED_PATH) -> Path:
    Path(path).write_text(generate_source(derivations))
    return Path(path)
