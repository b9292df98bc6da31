r"""Soft targets (mixup, cutmix, distillation): the softmax losses' supremum over any target distribution.

A softmax loss is written for one unit p with :math:`t = [y = p]` (:mod:`.losses`).  A soft target
is a probability vector; unit p then sees :math:`t_p \in [0, 1]` and the row's loss
:math:`-\sum_p t_p \log s_p` has, because :math:`\sum_p t_p = 1`, the same per-unit derivative
:math:`\partial E/\partial z_p = (\sigma(z_p - r_p) - t_p)/m` with t now continuous.  So the
supremum over soft targets is the supremum of the same derivative with :math:`t \in [0, 1]`
instead of :math:`t \in \{0, 1\}`.  :func:`soft_target_supremum` computes it with the same engine
(critical points, boundaries, limits); for ``softmax_ce`` it is :math:`1/m` again, so every bound
derived from the supremum, the strict one included, holds for soft targets unchanged.
"""
from __future__ import annotations

import sympy as sp

from lipschitz_lab.symbolic.domain import interval
from lipschitz_lab.symbolic.spec import LossSpec
from lipschitz_lab.symbolic.supremum import Supremum, supremum_abs
from lipschitz_lab.symbolic.symbols import t

__all__ = ["soft_target_supremum", "soft_variables"]


def soft_variables(spec: LossSpec) -> list:
    """The spec's variables with the indicator t ∈ {0, 1} widened to the interval [0, 1]."""
    out = [interval(t, 0, 1, "target probability of unit p") if v.symbol == t else v for v in spec.variables]
    if all(v.symbol != t for v in spec.variables):
        raise ValueError(f"loss {spec.name!r} has no target indicator t: soft targets do not apply")
    return out


def soft_target_supremum(spec: LossSpec) -> Supremum:
    """sup |∂E/∂z| over logits and a target probability t ∈ [0, 1] (a SymPy expression in m, k, ...)."""
    return supremum_abs(sp.diff(spec.loss, spec.wrt), soft_variables(spec))
