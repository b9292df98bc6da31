r"""σ_max of the batch activations with a bias column, for the smoothness bound.

The loss's Hessian with respect to the last layer's weights and bias is
:math:`H = \sum_i (\tilde a_i \tilde a_i^\top) \otimes \nabla^2_z e_i` with
:math:`\tilde a_i = [a_i; 1]`, so
:math:`\lambda_{\max}(H) \le S_2 \cdot \sigma_{\max}([A, 1])^2`, where
:math:`S_2` is the derived supremum of the loss's second derivative
(:func:`lipschitz_lab.bounds.smoothness_bound`).

``power``: a few power-iteration steps on :math:`B^\top B`, :math:`B = [A, 1]`,
warm-started from the previous step's vector (the activations move slowly, so
one or two steps track the top singular value).  The estimate is the Rayleigh
quotient, which approaches :math:`\sigma_{\max}^2` from below.

``frobenius``: :math:`\|B\|_F^2 = \|A\|_F^2 + m \ge \sigma_{\max}^2`, a free
upper bound from numbers the probe already has (loose by up to the rank).
"""
from __future__ import annotations

import torch

__all__ = ["SIGMA_METHODS", "PowerIteration"]

#: how σ_max([A, 1]) is measured (None: not at all)
SIGMA_METHODS = ("power", "frobenius")


class PowerIteration:
    """The top eigenvalue of :math:`B^\\top B` for a stream of batches B = [A, 1], warm-started."""

    def __init__(self, iters: int = 2):
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"power_iters must be an integer >= 1; got power_iters={iters!r}")
        self.iters = iters
        self.v: torch.Tensor | None = None

    @torch.no_grad()
    def sigma_sq(self, A: torch.Tensor) -> torch.Tensor:
        """:math:`\\sigma_{\\max}([A, 1])^2` estimate as a float64 0-d tensor on A's device (no sync)."""
        A = A.detach().reshape(-1, A.shape[-1]).float()
        d = A.shape[1]
        v = self.v
        if v is None or v.shape[0] != d + 1 or v.device != A.device:
            v = torch.full((d + 1,), (d + 1) ** -0.5, device=A.device)   # ones: the Perron vector of ReLU data
        for _ in range(self.iters):
            u = A @ v[:d] + v[d]                                   # B v
            w = torch.cat([A.T @ u, u.sum().reshape(1)])           # Bᵀ B v
            v = w / w.norm().clamp_min(1e-30)
        self.v = v
        u = A @ v[:d] + v[d]
        return u.square().sum().double()                          # vᵀ Bᵀ B v, ‖v‖ = 1
