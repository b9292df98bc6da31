r"""Curvature instruments: the network's sharpness λ_max, the edge of stability lr·λ_max, and the
step quality (dir_curv, α) along the update actually taken.

Each instrument is one small class that says what it measures, how often and what it costs
(Cockpit's instruments, Schneider, Dangel & Hennig, NeurIPS 2021).  They read Hessian-vector
products of the step's batch loss at the weights behind the step
(:class:`~lipschitz_lab.probe.hessian.BatchHessian`) and return float64 0-d device tensors:
nothing waits for the device.  :class:`~lipschitz_lab.probe.monitor.CurvatureMonitor` runs
them in a training loop; :data:`CURVATURE` lays their numbers out for a step's record.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lipschitz_lab.probe.hessian import BatchHessian, dot
from lipschitz_lab.probe.layout import Field, StatLayout

__all__ = ["CURVATURE", "Sharpness", "StepQuality", "decode_curvature", "edge", "edge_limit", "top_ritz"]

#: the curvature numbers of a measured step (each rank's own batch: never reduced)
CURVATURE = StatLayout(Field(name, "local") for name in ("lambda_max", "edge", "dir_curv", "alpha"))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")
    return value


class Sharpness:
    r"""λ_max: the top eigenvalue of the batch loss's Hessian in every trainable parameter.

    .. math::

        \lambda_{\max} \approx \theta_1 = \max_{0 \ne y \in \mathcal{K}_k} \frac{y^\top H y}{y^\top y},
        \qquad \mathcal{K}_k = \operatorname{span}\{v, Hv, \dots, H^{k-1} v\}

    where:
        - H is the Hessian of the step's batch loss at the weights behind its gradient
          (train mode: with BatchNorm, the batch's statistics; see :mod:`.hessian`);
        - v is the warm start: the last measurement's top Ritz vector after one more (free)
          power step on :math:`H - \sigma I`, a seeded random vector the first time; the shift
          :math:`\sigma = \min(0, 2\theta_{\min})` over the measurements so far (θ_min: the
          smallest Ritz value) keeps that step from turning to a dominant negative eigenvalue;
        - k = ``iters`` (``cold_iters`` on a cold start) Hessian-vector products: k steps of
          Lanczos with full reorthogonalisation; θ₁ is the top eigenvalue of its k × k
          tridiagonal matrix.  With k = 1 this is one power-iteration step: θ₁ = vᵀHv.

    What it reports: θ₁ is a Rayleigh quotient, so it never exceeds the *top* (most positive)
    eigenvalue, and it meets it as the Krylov space grows; it is at least every power-iteration
    estimate from v with as many products.  Unlike power iteration, which finds the eigenvalue of
    largest magnitude, it does not turn to a dominant *negative* eigenvalue (a saddle): it
    reports the top one, the one that limits a step's stability (and a negative number only
    when H has no positive eigenvalue).  Why Lanczos, and k = 5: on the Table-1 CNN the top
    eigenvector of one step's Hessian (its batch, its dropout masks) is a poor start on the
    next measured step's, so one product per measurement reads 16-30% of λ_max; 5 Lanczos
    steps from it read 98% (benchmarks/RESULTS.md, docs/curvature.md).

    How often: every ``every`` steps (:meth:`due`).  Cost: k products, about two training steps
    each on the Table-1 CNN, plus the gradient with its graph (shared with
    :class:`StepQuality`), and k+1 vectors of the parameters' size; see benchmarks/RESULTS.md.
    No host sync: the k × k eigenproblem is solved on the device (:func:`top_ritz`).
    """

    def __init__(self, every: int = 10, iters: int = 5, cold_iters: int = 20, seed: int = 0):
        self.every = _check_int("sharpness_every", every, 1)
        self.iters = _check_int("sharpness_iters", iters, 1)
        self.cold_iters = _check_int("cold_iters", cold_iters, 1)
        self.seed = seed
        self.v: list[torch.Tensor] | None = None          # the warm start, unit norm
        self.shift: torch.Tensor | None = None            # σ <= 0 of the warm start's power step

    def due(self, step: int) -> bool:
        """Whether step ``step`` (0-based) is measured."""
        return step % self.every == 0

    def _start(self, params: Sequence[torch.Tensor]) -> int:
        """Warm start when the last vector fits these parameters, else a seeded random vector;
        returns the number of products (at most the number of parameters)."""
        fits = self.v is not None and len(self.v) == len(params) and all(
            v.shape == p.shape and v.device == p.device for v, p in zip(self.v, params))
        if fits:
            self.v = [v.to(p.dtype) for v, p in zip(self.v, params)]
        else:
            gen = torch.Generator(device=params[0].device).manual_seed(self.seed)
            v = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in params]
            norm = dot(v, v).sqrt()
            self.v = [t / norm.to(t.dtype) for t in v]
        if self.shift is None or not fits:
            self.shift = torch.zeros((), dtype=torch.float64, device=params[0].device)
        self.shift = self.shift.to(params[0].device)
        return min(self.iters if fits else self.cold_iters, sum(p.numel() for p in params))

    def measure(self, hvp: BatchHessian) -> torch.Tensor:
        """λ_max as a float64 0-d tensor on the parameters' device (no sync)."""
        k = self._start(hvp.params)
        basis, alphas, betas = [self.v], [], []
        alive = torch.ones((), dtype=torch.bool, device=self.shift.device)
        for _ in range(k):
            q = basis[-1]
            w = hvp(q)
            a = dot(q, w)
            for _ in range(2):                       # Gram-Schmidt twice: orthogonal in float32 too
                for b in basis:
                    c = dot(b, w).to(w[0].dtype)
                    w = [wi - c * bi for wi, bi in zip(w, b)]
            beta = dot(w, w).sqrt()
            # after a breakdown (an invariant subspace: β = 0) the rest repeats α₀, never above θ₁
            alphas.append(torch.where(alive, a, alphas[0]) if alphas else a)
            alive = alive & (beta > 0) & torch.isfinite(beta)
            betas.append(torch.where(alive, beta, 0.0))
            safe = torch.where(alive, beta, 1.0).to(w[0].dtype)
            basis.append([torch.where(alive, wi / safe, 0.0) for wi in w])
        T = torch.diag(torch.stack(alphas))
        if k > 1:
            off = torch.stack(betas[:-1])
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = top_ritz(T)
        self.shift = torch.minimum(self.shift, 2 * torch.clamp(-top_ritz(-T)[0], max=0.0))
        self.v = _next_start(basis, s, theta - self.shift, betas[-1], self.v)
        return theta

    def state_dict(self) -> dict[str, Any]:
        """The warm start (CPU tensors; syncs: call it at a checkpoint)."""
        return {"v": None if self.v is None else [t.detach().cpu() for t in self.v],
                "shift": None if self.shift is None else float(self.shift)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.v = None if state.get("v") is None else [torch.as_tensor(t) for t in state["v"]]
        shift = state.get("shift")
        self.shift = None if shift is None else torch.tensor(float(shift), dtype=torch.float64)


#: squarings in :func:`top_ritz`: eigenvalue ratios down to 1 + 1e-11 separate
SQUARINGS = 40


def top_ritz(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The top eigenvalue and a unit eigenvector of a small symmetric matrix, on its device,
    without a host sync (``torch.linalg.eigh`` syncs on CUDA): repeated squaring of
    :math:`M = T - \ell I`, with ℓ Gershgorin's lower bound (so M >= 0), converges to the
    projector onto the top eigenspace; its largest column is the eigenvector, and the eigenvalue
    its Rayleigh quotient (float64 rounding)."""
    d, r = T.diagonal(), T.abs().sum(1) - T.diagonal().abs()
    lo, hi = (d - r).min(), (d + r).max()
    # a margin below the spectrum: M > 0 even when T is a multiple of I (then any vector will do)
    lo = lo - 1e-3 * (hi - lo + hi.abs() + lo.abs()) - torch.finfo(T.dtype).tiny
    M = T - lo * torch.eye(T.shape[0], dtype=T.dtype, device=T.device)
    for _ in range(SQUARINGS):
        M = M @ M
        M = M / M.abs().max().clamp_min(torch.finfo(T.dtype).tiny)
    col = M.norm(dim=0).argmax()
    s = M.index_select(1, col.reshape(1)).squeeze(1)
    s = s / s.norm().clamp_min(torch.finfo(T.dtype).tiny)
    return s @ T @ s, s


def _next_start(basis, s: torch.Tensor, gap: torch.Tensor, beta: torch.Tensor, old):
    r"""The next warm start: the Ritz vector y = Σ sᵢ qᵢ after one shifted power step, free from
    the Lanczos relation: :math:`(H - \sigma I) y = (\theta_1 - \sigma) y + \beta_k s_k q_k`."""
    k = s.shape[0]
    y = [sum(s[i].to(t.dtype) * basis[i][j] for i in range(k)) for j, t in enumerate(basis[0])]
    z = [(gap.to(yj.dtype) * yj + (beta * s[k - 1]).to(yj.dtype) * qk) for yj, qk in zip(y, basis[k])]
    norm = dot(z, z).sqrt()
    ok = torch.isfinite(norm) & (norm > 0)
    safe = torch.where(ok, norm, 1.0)
    return [torch.where(ok, zj / safe.to(zj.dtype), vj) for zj, vj in zip(z, old)]


class StepQuality:
    r"""dir_curv and α: the curvature along the update Δw actually taken, and where on the
    one-dimensional quadratic along it the step landed.

    .. math::

        \text{dir\_curv} = \frac{\Delta w^\top H \Delta w}{\|\Delta w\|^2}, \qquad
        q(\tau) = \ell + \tau\, g^\top \Delta w + \tfrac12 \tau^2\, \Delta w^\top H \Delta w, \qquad
        \alpha = \frac{2}{\bar\tau} - 1 = -\frac{\Delta w^\top H \Delta w}{g^\top \Delta w} - 1

    where g and H are the batch loss's gradient and Hessian at the weights before the step,
    τ = 1 is the step taken and :math:`\bar\tau = -2 g^\top\Delta w / \Delta w^\top H\Delta w`
    the "other side" of the quadratic, where q is back at ℓ.  So α = −1: the step did not
    move down the quadratic; 0: it landed at the minimum; 1: on the other side (the edge of
    stability along Δw); above 1: beyond it (the loss along Δw went up).  Cockpit's
    conventions: α = −1 when q is not convex along Δw (curvature <= 0) or Δw = 0.

    Cockpit's α (f-dangel/cockpit, ``quantities/alpha.py``) fits the quadratic to the loss and
    slope at both ends of the step, the end on the next batch; this one takes the exact
    curvature at the start, on the same batch.  On a quadratic the two agree exactly.

    Cost: one Hessian-vector product per measured step (every ``every`` steps, as
    :class:`Sharpness`).  No host sync.
    """

    #: |α| is capped here: g^T Δw = 0 with positive curvature is an infinitely bad step
    ALPHA_CAP = 1e6

    def measure(self, hvp: BatchHessian, update: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``dir_curv``, ``alpha``, and the slope g^T Δw and curvature Δw^T H Δw behind them."""
        curv = dot(update, hvp(update))
        sq = dot(update, update)
        slope = dot(hvp.grad, update)
        moved = sq > 0
        dir_curv = torch.where(moved, curv / torch.where(moved, sq, 1.0), torch.nan)
        safe = torch.where(slope == 0, -torch.finfo(torch.float64).tiny, slope)
        alpha = (-curv / safe - 1).clamp(-self.ALPHA_CAP, self.ALPHA_CAP)
        alpha = torch.where(moved & (curv > 0), alpha, -1.0)
        return {"dir_curv": dir_curv, "alpha": alpha, "slope": slope, "curv": curv}


def edge_limit(momentum: float = 0.0, nesterov: bool = False) -> float:
    r"""The largest stable lr·λ on a quadratic: 2 for gradient descent, 2(1+μ) with heavy-ball
    momentum μ, (2+2μ)/(1+2μ) with Nesterov's (Cohen et al., ICLR 2021, appendix)."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1); got momentum={momentum!r}")
    return (2 + 2 * momentum) / (1 + 2 * momentum) if nesterov else 2 * (1 + momentum)


def edge(lr, lambda_max, weight_decay: float = 0.0):
    r""":math:`lr\,(\lambda_{\max} + \lambda)`: the step against the curvature it sees (the
    optimizer's weight decay λ adds λ·I to the loss's Hessian).  Unstable above :func:`edge_limit`.
    A tensor λ_max gives a float64 tensor on its device; plain numbers give a float (a record)."""
    if isinstance(lambda_max, torch.Tensor):
        lr = torch.as_tensor(lr, dtype=torch.float64, device=lambda_max.device)
    return lr * (lambda_max + weight_decay)


def decode_curvature(values: Sequence[float]) -> dict[str, float | None]:
    """A measured step's :data:`CURVATURE` numbers as record fields; a NaN (a failed
    measurement) is None, not a divergence (the loss says that)."""
    fields = CURVATURE.unpack(list(values))
    return {k: (v if math.isfinite(v) else None) for k, v in fields.items()}
