"""One derivation per loss: the steps, the supremum, the paper's claim, the verdict.

Nothing here is a stored verdict: each field is computed from the loss's
definition when :func:`derive` runs (and cached afterwards).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy as sp

from lipschitz_lab.symbolic.binding import batch_of, criterion_parts, infer_task, label_values
from lipschitz_lab.symbolic.domain import Var, interval
from lipschitz_lab.symbolic.proofs import abs_value, is_nonnegative
from lipschitz_lab.symbolic.smoothness import Smoothness, derive_smoothness
from lipschitz_lab.symbolic.spec import LossSpec
from lipschitz_lab.symbolic.step_witness import find_step_witness
from lipschitz_lab.symbolic.supremum import Supremum, supremum_abs
from lipschitz_lab.symbolic.symbols import K_z, a, b, lam, m, w, w_max
from lipschitz_lab.symbolic.witness import find_witness


@dataclass
class Step:
    title: str
    lhs: str            # LaTeX
    rhs: sp.Expr
    note: str = ""


@dataclass
class Derivation:
    spec: LossSpec
    steps: list[Step]
    derivative: sp.Expr                 # dE/dz, simplified
    sup: Supremum                       # sup |dE/dz| over the whole domain
    quotient: sp.Expr | None            # (E(b)-E(a))/(b-a), mse only
    quotient_sup: Supremum | None
    paper_sup: sp.Expr | None           # the paper's claimed sup |dE/dz| (its L / K_z)
    paper_point_value: sp.Expr | None   # |dE/dz| at the paper's chosen point
    paper_holds: bool | None            # None: no paper claim, or undecided
    paper_proof: str
    witness: dict | None
    corrected_bound: sp.Expr            # sup · K_z (same framework as the paper)
    strict_bounds: dict[str, sp.Expr]   # rigorous bound on the mean-over-batch gradient
    weight_decay: sp.Expr               # lam * w_max, derived
    smoothness: Smoothness              # S₂ = sup ‖∇²_z E‖₂, the gradient's Lipschitz constant in z
    paper_rate_witness: dict | None     # a batch where one step at 1/L_paper raises the loss
    criterion: dict[str, sp.Expr]       # the batch loss's pieces (binding.criterion_parts)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def paper_bound(self) -> sp.Expr | None:
        return self.spec.paper_bound

    @property
    def info(self) -> dict:
        """How the lab uses the loss: its binding, task and (binary) label values."""
        labels = label_values(self.spec)
        return {"batch": batch_of(self.spec), "task": infer_task(self.spec),
                "labels": None if labels is None else tuple(int(v) if v.is_integer else float(v)
                                                            for v in labels)}

    def bound(self, variant: str, kz: str = "frobenius") -> sp.Expr | None:
        """L without the weight-decay term, in a variant."""
        if variant == "paper":
            return self.paper_bound
        if variant == "corrected":
            return self.corrected_bound
        if variant == "strict":
            return self.strict_bounds[kz]
        raise ValueError(f"unknown bound variant {variant!r}")


def _weight_decay_term() -> sp.Expr:
    """lam/2·w² adds lam·w to the gradient; its sup over |w| <= w_max."""
    grad = sp.diff(lam / 2 * w ** 2, w)
    return supremum_abs(grad, [interval(w, -w_max, w_max)]).value


def _strict_bounds(S: sp.Expr) -> dict[str, sp.Expr]:
    r"""Rigorous bounds on max |∂E/∂W_pj| and |∂E/∂b_p| of the last layer.

    ∂E/∂W_pj = Σ_i (∂E/∂z_ip)·a_ij with |∂E/∂z_ip| <= S for every sample i, so
    |∂E/∂W_pj| <= S·Σ_i |a_ij|.  With K_z = max |a_ij| the sum is at most m·K_z;
    with K_z = ‖A‖_F, Cauchy–Schwarz gives Σ_i |a_ij| <= √m·‖a_·j‖ <= √m·K_z.
    The bias sees a_ij = 1: |∂E/∂b_p| <= S·m.
    """
    return {
        "max_abs": S * m * sp.Max(K_z, 1),
        "frobenius": S * sp.sqrt(m) * sp.Max(K_z, sp.sqrt(m)),
    }


def _value_at(f: sp.Expr, point: dict, variables) -> sp.Expr:
    """max |f| at ``point`` over the finite-set variables the point leaves free."""
    free = [v for v in variables if v.discrete and v.symbol not in point]
    values = set()
    for combo in itertools.product(*(v.values for v in free)):
        at = f.subs(point).subs({v.symbol: val for v, val in zip(free, combo)})
        values.add(abs_value(sp.simplify(at.rewrite(sp.exp))))
    return sp.simplify(sp.Max(*values))


def derive_spec(spec: LossSpec) -> Derivation:
    criterion = criterion_parts(spec)   # first: a spec in the wrong coordinates fails here
    notes: list[str] = []
    steps = [Step("Loss", "E", spec.loss)]
    quotient = quotient_sup = None
    if spec.quotient:
        # eq. 8: the Lipschitz quotient of E between two output values a, b
        Ea, Eb = spec.loss.subs(spec.wrt, a), spec.loss.subs(spec.wrt, b)
        quotient = sp.factor(sp.cancel((Eb - Ea) / (b - a)))
        zvar = next(v for v in spec.variables if v.symbol == spec.wrt)
        qvars = [Var(a, zvar.lo, zvar.hi), Var(b, zvar.lo, zvar.hi)] + \
                [v for v in spec.variables if v.symbol != spec.wrt]
        quotient_sup = supremum_abs(quotient, qvars)
        steps.append(Step("Lipschitz quotient (eq. 8)",
                          r"\frac{E(b) - E(a)}{b - a}", quotient))
        steps.append(Step("Supremum of its magnitude", r"\sup \left|\frac{E(b)-E(a)}{b-a}\right|",
                          quotient_sup.value))
    derivative = sp.factor(sp.simplify(sp.diff(spec.loss, spec.wrt)))
    steps.append(Step("Derivative", r"\frac{\partial E}{\partial %s}" % sp.latex(spec.wrt), derivative))
    sup = supremum_abs(derivative, list(spec.variables))
    notes += sup.notes
    steps.append(Step("Supremum over the whole domain",
                      r"\sup \left|\frac{\partial E}{\partial %s}\right|" % sp.latex(spec.wrt), sup.value,
                      "attained" if sup.attained else "approached in a limit, never attained"))

    paper_sup = paper_point_value = witness = None
    paper_holds, proof = None, "the paper makes no claim for this loss"
    if spec.paper_bound is not None:
        paper_sup = sp.simplify(spec.paper_bound / K_z)
        if spec.paper_point is not None:
            paper_point_value = _value_at(derivative, spec.paper_point, spec.variables)
        margin = sp.simplify(paper_sup - sup.value)
        proved = is_nonnegative(margin)
        if proved:
            paper_holds, proof = True, f"paper's value - supremum = {margin} >= 0 for all parameters"
        else:
            witness = find_witness(derivative, sup, paper_sup)
            if witness is not None:
                paper_holds = False
                proof = f"paper's value - supremum = {margin}; counterexample found"
            else:
                proof = f"undecided: paper's value - supremum = {margin}, no counterexample found"

    corrected = sp.simplify(sup.value * K_z)
    strict = _strict_bounds(sup.value)
    wd = _weight_decay_term()
    smooth = derive_smoothness(spec, derivative)
    notes += smooth.notes
    step_witness = find_step_witness(spec, derivative)
    return Derivation(spec, steps, derivative, sup, quotient, quotient_sup, paper_sup,
                      paper_point_value, paper_holds, proof, witness, corrected, strict, wd,
                      smooth, step_witness, criterion, notes)
