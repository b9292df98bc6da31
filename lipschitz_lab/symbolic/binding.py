r"""How a batch of network outputs maps onto a loss's coordinates, and the batch loss.

Two bindings cover the paper's losses and a user's:

- ``elementwise``: one output per sample. z is the output, y the target, and
  the batch loss is :math:`\sum_i E(z_i, y_i)` (E carries the 1/m).
- ``softmax``: k logits per sample. Unit p of sample i has z = z_ip,
  r = log Σ_{l≠p} e^{z_il} and t = [y_i = p].  The spec's loss is read as

  .. math:: E = u(z, t) + v(\operatorname{logsumexp}(z, r)) + (\text{terms in } c)

  where c stands for the other units' u, so the loss of sample i is
  :math:`\sum_p u(z_{ip}, t_{ip}) + v(\log\sum_l e^{z_{il}})`.

The task follows from the binding and the target's domain: softmax →
multiclass; a target with two values → binary; a target on an interval →
regression.
"""
from __future__ import annotations

import sympy as sp

from lipschitz_lab.symbolic.functions import logsumexp
from lipschitz_lab.symbolic.spec import LossSpec
from lipschitz_lab.symbolic.symbols import c, lse, r, t, y, z

TASKS = ("multiclass", "binary", "regression")
_COORDS = {"elementwise": {z, y}, "softmax": {z, r, t}}


def batch_of(spec: LossSpec) -> str:
    """The spec's binding: as declared, else softmax when the loss is written in r."""
    if spec.batch is not None:
        return spec.batch
    return "softmax" if r in {v.symbol for v in spec.variables} else "elementwise"


def _target(spec: LossSpec):
    return next((v for v in spec.variables if v.symbol == y), None)


def infer_task(spec: LossSpec) -> str | None:
    """multiclass / binary / regression from the spec, or None when it cannot tell."""
    if batch_of(spec) == "softmax":
        return "multiclass"
    target = _target(spec)
    if target is None:
        return None
    if target.discrete:
        return "binary" if len(target.values) == 2 else None
    return "regression"


def label_values(spec: LossSpec) -> tuple | None:
    """The two label values of a binary target, ascending (data label 0 → first, 1 → second)."""
    target = _target(spec)
    if target is None or not target.discrete or len(target.values) != 2:
        return None
    return tuple(sorted(sp.S(v) for v in target.values))


def check_binding(spec: LossSpec) -> None:
    """The spec is written in its binding's coordinates (ValueError naming what is not)."""
    batch = batch_of(spec)
    if spec.wrt != z:
        raise ValueError(f"loss {spec.name!r}: wrt must be the output z; got wrt={spec.wrt}")
    extra = {v.symbol for v in spec.variables} - _COORDS[batch]
    if extra:
        names = ", ".join(sorted(map(str, _COORDS[batch])))
        raise ValueError(f"loss {spec.name!r}: a {batch} loss is written in {names}; "
                         f"got variables={sorted(map(str, extra))}")


def _split_softmax(spec: LossSpec) -> tuple[sp.Expr, sp.Expr]:
    norms = spec.loss.atoms(logsumexp)
    if norms - {logsumexp(z, r)}:
        raise ValueError(f"loss {spec.name!r}: a softmax loss normalises with logsumexp(z, r); "
                         f"got {sorted(map(str, norms))}")
    u, v = sp.S(0), sp.S(0)
    for term in sp.Add.make_args(sp.expand(spec.loss.subs(logsumexp(z, r), lse))):
        syms = term.free_symbols
        if c in syms:
            if syms & {z, r, t, lse} or not sp.diff(term, c, 2).is_zero:
                raise ValueError(f"loss {spec.name!r}: c must enter linearly and alone; got term {term}")
        elif lse in syms:
            if syms & {z, r, t}:
                raise ValueError(f"loss {spec.name!r}: term {term} mixes logsumexp(z, r) with z, r or t")
            v += term
        elif r in syms:
            raise ValueError(f"loss {spec.name!r}: term {term} depends on r outside logsumexp(z, r)")
        else:
            u += term
    return sp.factor(u), sp.factor(v)


def criterion_parts(spec: LossSpec) -> dict[str, sp.Expr]:
    """The batch loss's pieces: ``{"E": E(z, y)}`` or ``{"E_unit": u(z, t), "E_norm": v(lse)}``."""
    check_binding(spec)
    if batch_of(spec) == "elementwise":
        if spec.loss.free_symbols & {c, r, t, lse}:
            raise ValueError(f"loss {spec.name!r}: an elementwise loss depends on z and y only; "
                             f"got loss={spec.loss}")
        return {"E": spec.loss}
    u, v = _split_softmax(spec)
    # the pieces must give back the spec's own derivative (c's terms vanish in it)
    rebuilt = sp.diff(u + v.subs(lse, logsumexp(z, r)), z) - sp.diff(spec.loss, z)
    if sp.simplify(rebuilt.rewrite(sp.exp)) != 0:
        raise ValueError(f"loss {spec.name!r}: its unit and normaliser terms do not rebuild dE/dz")
    return {"E_unit": u, "E_norm": v}
