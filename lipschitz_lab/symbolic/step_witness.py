r"""Is lr = 1/L_paper a safe gradient step?  A batch where one step raises the loss.

The paper offers lr = 1/L as a step for gradient descent; L bounds the
gradient, not its rate of change, so nothing guarantees that the step lowers
the loss.  For the last layer z_i = W a_i + b the engine searches small
batches (seeded, m ≤ 4 rows, d ≤ 2 features, integer activations) for one
where

.. math:: W \leftarrow W - \tfrac{1}{L}\,\partial E/\partial W, \qquad
          b \leftarrow b - \tfrac{1}{L}\,\partial E/\partial b

raises E for L = L_paper with K_z measured on the batch both ways (‖A‖_F and
max|a|; K_a = ‖z‖₂ and y_norm = ‖y‖₂ as the scheduler measures them).  All
numbers are 30-digit mpmath, from the spec alone: the loss from its batch
pieces (:mod:`~lipschitz_lab.symbolic.binding`), the gradient from dE/dz.
"""
from __future__ import annotations

import random

import mpmath
import sympy as sp

from lipschitz_lab.symbolic.binding import batch_of, criterion_parts, label_values
from lipschitz_lab.symbolic.spec import LossSpec
from lipschitz_lab.symbolic.symbols import K_a, K_z, eps, k, lse, m, r, t, y, y_norm, z

SEED = 0
TRIALS = 30                      # draws per (m, d, k)
ACTIVATIONS = range(-3, 4)       # entries of A
WEIGHTS = (-1, -0.5, 0, 0.5, 1)  # entries of W, b and real targets
EPS = sp.Rational(1, 10)


def _fn(args, expr):
    return sp.lambdify(args, expr.rewrite(sp.exp), modules="mpmath")


class _Batch:
    """The spec's batch loss and its gradient in the logits, for one (m, k)."""

    def __init__(self, spec: LossSpec, derivative: sp.Expr, mm: int, kk: int):
        fixed = {m: mm, k: kk, eps: EPS}
        self.softmax = batch_of(spec) == "softmax"
        parts = {key: e.subs(fixed) for key, e in criterion_parts(spec).items()}
        g = derivative.subs(fixed)
        if self.softmax:
            self.unit, self.norm = _fn((z, t), parts["E_unit"]), _fn((lse,), parts["E_norm"])
            self.grad = _fn((z, r, t), g)
        else:
            self.elem, self.grad = _fn((z, y), parts["E"]), _fn((z, y), g)
        self.paper = _fn((K_z, K_a, y_norm), spec.paper_bound.subs(fixed))

    def loss(self, Z, targets):
        if not self.softmax:
            return sum(self.elem(zi[0], yi) for zi, yi in zip(Z, targets))
        total = mpmath.mpf(0)
        for row, label in zip(Z, targets):
            total += sum(self.unit(zp, int(p == label)) for p, zp in enumerate(row))
            total += self.norm(mpmath.log(sum(mpmath.exp(q) for q in row)))
        return total

    def dZ(self, Z, targets):
        if not self.softmax:
            return [[self.grad(zi[0], yi)] for zi, yi in zip(Z, targets)]
        out = []
        for row, label in zip(Z, targets):
            rs = [mpmath.log(sum(mpmath.exp(q) for j, q in enumerate(row) if j != p))
                  for p in range(len(row))]
            out.append([self.grad(zp, rp, int(p == label)) for p, (zp, rp) in enumerate(zip(row, rs))])
        return out


def _forward(A, W, b):
    return [[sum(wj * aj for wj, aj in zip(w_row, a)) + bp for w_row, bp in zip(W, b)] for a in A]


def _step(batch: _Batch, A, W, b, targets, lr):
    G = batch.dZ(_forward(A, W, b), targets)
    W2 = [[W[p][j] - lr * sum(G[i][p] * A[i][j] for i in range(len(A))) for j in range(len(A[0]))]
          for p in range(len(W))]
    b2 = [b[p] - lr * sum(G[i][p] for i in range(len(A))) for p in range(len(b))]
    return batch.loss(_forward(A, W2, b2), targets)


def _targets(spec: LossSpec, rng: random.Random, mm: int, kk: int, softmax: bool):
    if softmax:
        return [rng.randrange(kk) for _ in range(mm)]
    labels = label_values(spec)
    pool = [int(v) if v.is_integer else float(v) for v in labels] if labels else list(WEIGHTS)
    return [rng.choice(pool) for _ in range(mm)]


def _norm2(rows):
    return mpmath.sqrt(sum(mpmath.mpf(v) ** 2 for row in rows for v in row))


def _try(batch: _Batch, A, W, b, targets) -> dict | None:
    """The step's outcome for both K_z definitions, if it raises the loss for both."""
    Z = _forward(A, W, b)
    before = batch.loss(Z, targets)
    stats = {"K_a": _norm2(Z), "y_norm": _norm2([[v] for v in targets]) if not batch.softmax else 0}
    steps = {}
    for kz, K in (("frobenius", _norm2(A)), ("max_abs", max(abs(v) for row in A for v in row))):
        L = batch.paper(K, stats["K_a"], stats["y_norm"])
        if not L > 0:
            return None         # no rate follows (the paper's mse bound can be <= 0)
        after = _step(batch, A, W, b, targets, 1 / L)
        if not after > before * (1 + mpmath.mpf(10) ** -6):
            return None
        steps[kz] = {"K_z": float(K), "L_paper": float(L), "lr": float(1 / L), "loss_after": float(after)}
    return {"loss_before": float(before), "steps": steps,
            **({"K_a": float(stats["K_a"]), "y_norm": float(stats["y_norm"])} if not batch.softmax else {})}


def find_step_witness(spec: LossSpec, derivative: sp.Expr) -> dict | None:
    """The smallest batch found where one step at 1/L_paper raises the loss, or None."""
    if spec.paper_bound is None:
        return None
    rng = random.Random(SEED)
    softmax = batch_of(spec) == "softmax"
    with mpmath.workdps(30):
        for mm in range(1, 5):
            for kk in ((2, 3) if softmax else (1,)):
                batch = _Batch(spec, derivative, mm, kk)
                for d in (1, 2):
                    for _ in range(TRIALS):
                        A = [[rng.choice(ACTIVATIONS) for _ in range(d)] for _ in range(mm)]
                        W = [[rng.choice(WEIGHTS) for _ in range(d)] for _ in range(kk)]
                        b = [rng.choice(WEIGHTS) for _ in range(kk)]
                        targets = _targets(spec, rng, mm, kk, softmax)
                        found = _try(batch, A, W, b, targets)
                        if found is not None:
                            params = {"m": mm, **({"k": kk} if softmax else {})}
                            return {"params": params, "A": A, "W": W, "b": b,
                                    ("labels" if softmax else "targets"): targets, **found}
    return None
