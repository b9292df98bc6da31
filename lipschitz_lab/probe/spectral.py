r"""σ_max of the batch activations with a bias column, for the smoothness bound.

The loss's Hessian with respect to the last layer's weights and bias is
:math:`H = \sum_i (\tilde a_i \tilde a_i^\top) \otimes \nabla^2_z e_i` with
:math:`\tilde a_i = [a_i; 1]`, so
:math:`\lambda_{\max}(H) \le S_2 \cdot \sigma_{\max}([A, 1])^2`, where
:math:`S_2` is the derived supremum of the loss's second derivative
(:func:`lipschitz_lab.bounds.smoothness_bound`).

``power``: a few power-iteration steps on :math:`|B|^\top |B|` (entrywise absolute
values; after a ReLU, :math:`|B| = B`), warm-started from the previous step's vector
(the activations move slowly, so four steps a batch keep it within ~1 %; a cold start takes
:data:`COLD_ITERS`).  The estimate is the Collatz--Wielandt ratio
:math:`\max_i (M v)_i / v_i` of :math:`M = |B|^\top |B|` at the positive vector v:
for a nonnegative M and any positive v it is at least the spectral radius of M, and
:math:`\sigma_{\max}(B)^2 = \rho(B^\top B) \le \rho(|B|^\top |B|)` because
:math:`|B^\top B| \le |B|^\top |B|` entrywise.  So it bounds
:math:`\sigma_{\max}^2` from above whatever the iteration's progress, and meets it
as v converges to the Perron vector (for nonnegative activations).  Float64: the
bound holds to rounding (~1e-15), not to float32's 1e-7.

``frobenius``: :math:`\|B\|_F^2 = \|A\|_F^2 + m \ge \sigma_{\max}^2`, a free
upper bound from numbers the probe already has (loose by up to the rank).
"""
from __future__ import annotations

import torch

__all__ = ["SIGMA_METHODS", "PowerIteration"]

#: how σ_max([A, 1]) is measured (None: not at all)
SIGMA_METHODS = ("power", "frobenius")


#: power-iteration steps on the first batch (no vector to start from yet)
COLD_ITERS = 16


class PowerIteration:
    r"""An upper bound on :math:`\sigma_{\max}([A, 1])^2` for a stream of batches, warm-started."""

    def __init__(self, iters: int = 4):
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"power_iters must be an integer >= 1; got power_iters={iters!r}")
        self.iters = iters
        self.v: torch.Tensor | None = None

    @torch.no_grad()
    def sigma_sq(self, A: torch.Tensor) -> torch.Tensor:
        r""":math:`\ge \sigma_{\max}([A, 1])^2` as a float64 0-d tensor on A's device (no sync):
        the Collatz--Wielandt ratio of :math:`|B|^\top |B|` at the iteration's positive vector."""
        A = A.detach().reshape(-1, A.shape[-1]).double().abs()
        d = A.shape[1]
        v, iters = self.v, self.iters
        if v is None or v.shape[0] != d + 1 or v.device != A.device:
            v, iters = torch.full((d + 1,), (d + 1) ** -0.5, dtype=A.dtype, device=A.device), COLD_ITERS
        v = v.to(A.dtype)                        # a vector restored from an older checkpoint: float32
        tiny = torch.finfo(A.dtype).tiny
        for _ in range(iters):
            w = _gram(A, v)
            v = (w / w.norm().clamp_min(tiny)).clamp_min(tiny)   # stays positive: the ratio needs it
        self.v = v
        return (_gram(A, v) / v).max()


def _gram(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r""":math:`B^\top B v` for :math:`B = [A, 1]`, without forming B."""
    d = A.shape[1]
    u = A @ v[:d] + v[d]
    return torch.cat([A.T @ u, u.sum().reshape(1)])
