"""The losses: the paper's three, and one it does not cover.

Each is one short definition.  Adding your own is the same: build a
:class:`LossSpec` and pass it to :func:`lipschitz_lab.symbolic.register_loss`.

Softmax losses are written for one output unit p in two coordinates that
cover every logit vector exactly: ``z = z_p`` and ``r = log Σ_{l≠p} e^{z_l}``
(any real number when k ≥ 2), with ``t = [y = p]``.  Terms that do not depend
on ``z_p`` are collected in ``c``.
"""
from __future__ import annotations

import sympy as sp

from lipschitz_lab.symbolic.domain import finite, interval, real_line
from lipschitz_lab.symbolic.functions import logsumexp, sigmoid
from lipschitz_lab.symbolic.spec import LossSpec
from lipschitz_lab.symbolic.symbols import K_a, K_z, c, eps, k, m, r, t, y, y_norm, z

MSE = LossSpec(
    name="mse",
    title="Least squares, one output (section 4)",
    loss=(z - y) ** 2 / (2 * m),                                      # eq. 7, linear output a = z
    wrt=z,
    variables=(interval(z, -K_a, K_a, "output activation, |a| <= K_a"),
               interval(y, -y_norm, y_norm, "target, |y| <= y_norm")),
    inputs=("K_a", "y_norm"),
    paper_bound=(K_a - y_norm) * K_z / m,                             # eq. 9
    paper_equation="eq. 9",
    quotient=True,
)

BCE = LossSpec(
    name="bce",
    title="Binary cross-entropy on a sigmoid output (section 5)",
    loss=-(y * sp.log(sigmoid(z)) + (1 - y) * sp.log(1 - sigmoid(z))) / m,  # eq. 10
    wrt=z,
    variables=(real_line(z, "logit"), finite(y, (0, 1), "label")),
    paper_bound=K_z / (2 * m),                                        # eq. 15
    paper_equation="eq. 15",
    paper_point={z: 0},                                               # eq. 13-14: "a maximum at z = 0"
)

SOFTMAX_CE = LossSpec(
    name="softmax_ce",
    title="Softmax cross-entropy over k classes (section 6)",
    loss=-(t * z + c - logsumexp(z, r)) / m,                          # eq. 16
    wrt=z,
    variables=(real_line(z, "logit of unit p"), real_line(r, "log-sum-exp of the other logits"),
               finite(t, (0, 1), "[y = p]")),
    inputs=("k",),
    paper_bound=(k - 1) * K_z / (k * m),                              # eq. 20
    paper_equation="eq. 20",
    paper_point={z: r - sp.log(k - 1), t: 1},                         # "all softmax values equal, y = p"
)

# Not in the paper: label smoothing puts eps/k on every class, 1 - eps + eps/k on the label.
_q = (1 - eps) * t + eps / k
LABEL_SMOOTHED_CE = LossSpec(
    name="label_smoothed_ce",
    title="Label-smoothed softmax cross-entropy (not in the paper)",
    loss=-(_q * z + c - logsumexp(z, r)) / m,
    wrt=z,
    variables=SOFTMAX_CE.variables,
    inputs=("k", "eps"),
)

BUILTIN = (MSE, BCE, SOFTMAX_CE, LABEL_SMOOTHED_CE)
