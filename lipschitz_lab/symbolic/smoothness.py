r"""The smoothness supremum :math:`S_2 = \sup \|\nabla^2_z E\|_2`: how fast ∂E/∂z can change.

Gradient-descent theory needs the Lipschitz constant of the gradient (β), not
of the loss (the paper's L); S₂ is the loss's share of it, in the logits.

- elementwise losses: E_i depends on z_i alone, so the Hessian in the
  outputs is diagonal and :math:`S_2 = \sup |\partial^2 E / \partial z^2|`.
- softmax losses: with g(z, r, t) = ∂E/∂z_p, the chain rule through
  r_p = log Σ_{q≠p} e^{z_q} gives

  .. math:: H_{pp} = \partial_z g, \qquad H_{pq} = \partial_r g \cdot e^{z_q - r_p} \quad (q \ne p)

  and, since Σ_{q≠p} e^{z_q - r_p} = 1, Gershgorin's theorem bounds every
  eigenvalue: |λ| ≤ |∂_z g| + |∂_r g|.  Its supremum over (z, r, t) is an
  upper bound on S₂.  It is the value when it is reached: at the maximiser,
  one other unit carries r and the remaining k − 2 logits go to −∞; the
  Hessian tends to a 2×2 matrix whose eigenvalues SymPy computes exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mpmath
import sympy as sp

from lipschitz_lab.symbolic.binding import batch_of, criterion_parts
from lipschitz_lab.symbolic.proofs import abs_value, is_nonnegative
from lipschitz_lab.symbolic.spec import LossSpec
from lipschitz_lab.symbolic.supremum import Supremum, supremum_abs
from lipschitz_lab.symbolic.symbols import PARAMS, lse, r, t, z

#: parameters of the numeric witness (m = 1 and k = 3 keep the logit vectors short)
WITNESS_PARAMS = {"m": 1, "k": 3, "eps": sp.Rational(1, 10), "K_a": 2, "y_norm": 1}
#: how far the other k - 2 logits sit below (the limit is -oo)
APPROACH = (5, 10, 20, 40)


@dataclass
class Smoothness:
    value: sp.Expr                      # S₂, or an upper bound on it when not tight
    method: str
    steps: list[tuple[str, str, sp.Expr]]   # (title, LaTeX left-hand side, right-hand side)
    tight: bool                         # a lower bound (a point or a limit) meets the value
    attained: bool                      # reached at a finite point (not only in a limit)
    witness: dict | None
    notes: list[str] = field(default_factory=list)


def _params(*exprs) -> dict:
    free = set().union(*(e.free_symbols for e in exprs)) & set(PARAMS.values())
    return {p: sp.S(WITNESS_PARAMS[str(p)]) for p in sorted(free, key=str)}


def _num(expr) -> float:
    return float(sp.N(expr, 30))


def derive_smoothness(spec: LossSpec, derivative: sp.Expr) -> Smoothness:
    """S₂ for a loss, from its derivative dE/dz (the derivation's)."""
    if batch_of(spec) == "elementwise":
        return _elementwise(spec, derivative)
    return _softmax(spec, derivative)


def _elementwise(spec: LossSpec, g: sp.Expr) -> Smoothness:
    h = sp.factor(sp.simplify(sp.diff(g, z)))
    sup = supremum_abs(h, list(spec.variables))
    steps = [("Second derivative", r"\frac{\partial^2 E}{\partial z^2}", h),
             ("Its supremum (the Hessian in the outputs is diagonal)",
              r"S_2 = \sup\left|\frac{\partial^2 E}{\partial z^2}\right|", sup.value)]
    witness = _point_witness(h, sup)
    return Smoothness(sup.value, "sup |d2E/dz2|: one output per sample, a diagonal Hessian", steps,
                      tight=sup.best is not None, attained=sup.attained, witness=witness,
                      notes=list(sup.notes))


def _point_witness(h: sp.Expr, sup: Supremum) -> dict | None:
    """Where |d²E/dz²| reaches S₂ (or, for a limit, how it gets there), in numbers."""
    if sup.best is None:
        return None
    pv = _params(h, sup.value, *(sp.S(v) for _, v in sup.best.point))
    point = {s: v if v in (sp.oo, -sp.oo) else sp.S(v).subs(pv) for s, v in sup.best.point_dict.items()}
    for s in h.free_symbols - set(pv) - set(point):
        point[s] = sp.S(0)              # a coordinate the supremum does not depend on
    point = dict(sorted(point.items(), key=lambda kv: str(kv[0])))
    infinite = [s for s, v in point.items() if v in (sp.oo, -sp.oo)]
    f = h.rewrite(sp.exp).subs(pv)
    out = {"params": {str(p): _plain(v) for p, v in pv.items()}, "S2": _num(sup.value.subs(pv))}
    if not infinite:
        out.update(point={str(s): _plain(v) for s, v in point.items()}, value=abs(_num(f.subs(point))))
        return out
    walk = [{s: sp.sign(v) * far if s in infinite else v for s, v in point.items()} for far in APPROACH]
    out["approach"] = [{"point": {str(s): _plain(v) for s, v in x.items()}, "value": abs(_num(f.subs(x)))}
                       for x in walk]
    return out


def _softmax(spec: LossSpec, g: sp.Expr) -> Smoothness:
    g_z = sp.factor(sp.simplify(sp.diff(g, z)))
    g_r = sp.factor(sp.simplify(sp.diff(g, r)))
    row = sp.factor(sp.simplify(abs_value(g_z) + abs_value(g_r)))
    sup = supremum_abs(row, list(spec.variables))
    steps = [("Hessian in the logits, diagonal", r"H_{pp} = \frac{\partial g}{\partial z}", g_z),
             ("off the diagonal, q ≠ p", r"H_{pq}\, e^{r_p - z_q} = \frac{\partial g}{\partial r}", g_r),
             ("Gershgorin row sum, as sum over q of exp(z_q - r_p) = 1",
              r"|H_{pp}| + \sum_{q \ne p} |H_{pq}|", row),
             ("Its supremum: an upper bound on S_2", r"\sup \left(|H_{pp}| + \sum_{q \ne p} |H_{pq}|\right)",
              sup.value)]
    lower = _two_unit_limit(g_z, g_r, sup)
    tight = lower is not None and is_nonnegative(lower[0] - sup.value) is True
    witness = None
    if tight:
        steps.append(("Two units at the maximiser, the other k - 2 logits at -oo: largest |eigenvalue|",
                      r"\lambda_{\max}\!\left(\lim H\right)", lower[0]))
        witness = _softmax_witness(spec, sup, lower[1], lower[2])
    method = ("Gershgorin bound, met by the two-unit limit" if tight
              else "Gershgorin upper bound (not shown to be reached)")
    return Smoothness(sup.value, method, steps, tight=tight, attained=False, witness=witness,
                      notes=list(sup.notes))


def _two_unit_limit(g_z, g_r, sup: Supremum):
    """(largest |eigenvalue|, t1, t2) of the limit Hessian at the Gershgorin maximiser, or None."""
    if sup.best is None or sup.best.is_limit:
        return None
    pt = sup.best.point_dict
    z1, z2, t1 = pt.get(z, sp.S(0)), pt.get(r, sp.S(0)), pt.get(t, sp.S(0))
    best = None
    for t2 in ((0,) if t1 == 1 else (0, 1)):
        at1 = {z: z1, r: z2, t: t1}
        at2 = {z: z2, r: z1, t: t2}
        H = sp.Matrix([[g_z.subs(at1, simultaneous=True), g_r.subs(at1, simultaneous=True)],
                       [g_r.subs(at2, simultaneous=True), g_z.subs(at2, simultaneous=True)]])
        H = H.applyfunc(lambda e: e.rewrite(sp.exp))
        mags = [abs_value(sp.simplify(ev)) for ev in H.eigenvals()]
        top = next((a for a in mags if all(is_nonnegative(a - b) for b in mags)), None)
        if top is not None and (best is None or is_nonnegative(top - best[0])):
            best = (sp.simplify(top), t1, t2)
    return best


def _softmax_witness(spec: LossSpec, sup: Supremum, t1, t2) -> dict:
    """The k = 3 logit vectors (z*, r*, -L) and the Hessian's spectral norm there, in mpmath."""
    parts = criterion_parts(spec)
    pv = _params(sup.value, parts["E_unit"], parts["E_norm"], PARAMS["m"], PARAMS["k"])
    k = int(pv[PARAMS["k"]])
    label = 0 if t1 == 1 else (1 if t2 == 1 else 2)
    zs = sp.symbols(f"zeta0:{k}", real=True)
    sample = sum(parts["E_unit"].subs({z: zs[p], t: int(p == label)}) for p in range(k))
    sample += parts["E_norm"].subs(lse, sp.log(sum(sp.exp(q) for q in zs)))
    hess = sp.lambdify(zs, sp.hessian(sample.subs(pv).rewrite(sp.exp), zs), modules="mpmath")
    pt = sup.best.point_dict
    head = [_plain(pt.get(z, 0)), _plain(pt.get(r, 0))]
    approach = []
    with mpmath.workdps(30):
        for far in APPROACH:
            logits = head + [-far] * (k - 2)
            eig = mpmath.eigsy(mpmath.matrix(hess(*logits)), eigvals_only=True)
            approach.append({"logits": logits, "spectral_norm": float(max(abs(e) for e in eig))})
    return {"params": {str(p): _plain(v) for p, v in pv.items()}, "label": label,
            "S2": _num(sup.value.subs(pv)), "limit": "the other k - 2 logits -> -oo",
            "approach": approach}


def _plain(v):
    v = sp.S(v)
    return int(v) if v.is_integer else float(v)
