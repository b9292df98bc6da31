r"""Learning-rate rules from measured curvature: ``curvature`` (lr = c(1+μ)/λ_max) and
``directional`` (the minimiser of the quadratic along the step, GeN/CDAT-like).

Both update only on measured steps (:class:`~lipschitz_lab.probe.monitor.CurvatureMonitor`)
and hold the rate in between; both clamp with the one rule of
:func:`lipschitz_lab.bounds.learning_rate` (``min_lr``, ``max_lr``, the codes of
``bounds.CLAMPS``); both stay on the device.  docs/curvature.md says why this directional
variant and not another.
"""
from __future__ import annotations

from typing import Any

import torch

from lipschitz_lab.bounds import learning_rate

__all__ = ["CurvatureRate", "DirectionalRate", "curvature_rate"]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0; got {name}={value!r}")
    return float(value)


def curvature_rate(L: torch.Tensor, c: float, momentum: float, min_lr: float | None,
                   max_lr: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lr, code)``: c(1+μ)/L clamped by :func:`~lipschitz_lab.bounds.learning_rate`, for
    L = λ_max + λ (float64 0-d tensors, no sync).  The one place the curvature rule is written:
    :class:`CurvatureRate` and LipschitzLR's ``bound="curvature"`` both call it."""
    return learning_rate(L / (c * (1.0 + momentum)), min_lr=min_lr, max_lr=max_lr)


class CurvatureRate:
    r"""``bound="curvature"``: the rate from the whole network's sharpness.

    .. math::

        lr = \operatorname{clamp}\!\left(\frac{c\,(1+\mu)}{\lambda_{\max} + \lambda},\
        \text{min\_lr},\ \text{max\_lr}\right)

    where:
        - :math:`\lambda_{\max}` is the last measured top Hessian eigenvalue
          (:class:`~lipschitz_lab.probe.curvature.Sharpness`), held between measurements;
        - μ is the heavy-ball momentum, λ the weight decay (it adds λ·I to the Hessian);
        - c = 1 is gradient descent's classic step 1/λ_max on a λ_max-smooth loss, half the
          edge of stability 2/λ_max (and half of 2(1+μ)/λ_max with momentum).

    A measurement that is not finite keeps the rate in force; λ_max <= 0 (no positive
    curvature) gives ``max_lr`` (code ``"L<0"``/``"K_z=0"`` of ``bounds.CLAMPS``: the bound is
    not positive).  :meth:`update` returns ``(lr, code)`` as float64 0-d tensors (no sync);
    the rate's "L" for the record is λ_max + λ.
    """

    def __init__(self, c: float = 1.0, momentum: float = 0.0, weight_decay: float = 0.0,
                 min_lr: float | None = 1e-6, max_lr: float | None = 10.0):
        self.c = _positive("c", c)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got momentum={momentum!r}")
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.min_lr, self.max_lr = min_lr, max_lr
        self.lr: torch.Tensor | None = None       # the rate in force (None: never measured)
        self.code: torch.Tensor | None = None

    def update(self, lambda_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rate from this measurement, held until the next one."""
        L = lambda_max.to(torch.float64) + self.weight_decay
        lr, code = curvature_rate(L, self.c, self.momentum, self.min_lr, self.max_lr)
        if self.lr is not None:                    # a failed measurement keeps the rate in force
            ok = torch.isfinite(L)
            lr, code = torch.where(ok, lr, self.lr), torch.where(ok, code, self.code)
        self.lr, self.code = lr, code
        return lr, code

    def state_dict(self) -> dict[str, Any]:
        return {"lr": None if self.lr is None else float(self.lr),
                "code": None if self.code is None else float(self.code)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = None if state["lr"] is None else torch.tensor(state["lr"], dtype=torch.float64)
        self.code = None if state["code"] is None else torch.tensor(state["code"], dtype=torch.float64)


class DirectionalRate:
    r"""``directional``: the rate that lands at the minimum of the quadratic along the step.

    .. math::

        \eta^\star = \sigma\,\frac{\bar n_t}{\bar d_t}, \quad
        \bar n_t = \beta \bar n_{t-1} + (1-\beta)\, g^\top u, \quad
        \bar d_t = \beta \bar d_{t-1} + (1-\beta)\, u^\top H u, \quad
        u = -\Delta w / lr_t

        lr_{t+1} = \operatorname{clamp}\bigl(\min(\max(\eta^\star,\ lr_t/\rho),\ \rho\, lr_t),\
        \text{min\_lr},\ \text{max\_lr}\bigr)

    where:
        - u is the base direction of the update :math:`\Delta w = -lr_t\,u` actually taken
          (the gradient for SGD, the momentum buffer with heavy ball, Adam's preconditioned
          step), g and H the batch loss's gradient and Hessian before it; with one sample,
          :math:`\eta^\star = lr_t/(1+\alpha)` (α: :class:`~lipschitz_lab.probe.curvature.StepQuality`);
        - σ = ``scale``: 1 lands at the minimum along u (α = 0, GeN's rate), 2 on the other
          side (α = 1, CDAT's "edge" scaling);
        - β = ``beta``: CDAT's separate EMAs of numerator and denominator (their common bias
          factor 1 − β^n cancels in the ratio);
        - ρ = ``max_factor`` = 2: at most a doubling or halving per change (after the first
          measurement, which sets the rate outright unless ``first_outright=False``: LipschitzLR's
          directional rule starts from the curvature rate c/λ_max and caps its first change too).

    Fallback: a sample with :math:`u^\top H u \le 0` (no minimum along u), :math:`g^\top u \le 0`
    (u is not a descent direction on this batch) or a non-finite number is skipped, and the
    rate in force is kept.  References: GeN, Bu & Xu (ICLR 2025); CDAT, Roulet et al.
    (NeurIPS 2024).
    """

    def __init__(self, scale: float = 1.0, beta: float = 0.9, max_factor: float = 2.0,
                 min_lr: float | None = 1e-6, max_lr: float | None = 10.0, first_outright: bool = True):
        self.scale = _positive("scale", scale)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1); got beta={beta!r}")
        if not max_factor >= 1.0:
            raise ValueError(f"max_factor must be >= 1; got max_factor={max_factor!r}")
        self.beta, self.max_factor = float(beta), float(max_factor)
        self.first_outright = first_outright   # False: the rate in force is a good start already
        self.min_lr, self.max_lr = min_lr, max_lr
        self.num = self.den = self.seen = None    # float64 0-d EMAs and "a sample was taken"

    def update(self, slope: torch.Tensor, curv: torch.Tensor, lr_used) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The next rate from a measured step: ``slope`` = :math:`g^\top\Delta w`, ``curv`` =
        :math:`\Delta w^\top H \Delta w`, ``lr_used`` the rate of that update; ``(lr, code)``."""
        device = slope.device
        lr_t = torch.as_tensor(lr_used, dtype=torch.float64, device=device)
        if self.num is None:
            zero = torch.zeros((), dtype=torch.float64, device=device)
            self.num, self.den = zero, zero.clone()
            self.seen = torch.zeros((), dtype=torch.bool, device=device)
        n_t, d_t = -slope.double() / lr_t, curv.double() / (lr_t * lr_t)       # g^T u, u^T H u
        ok = (n_t > 0) & (d_t > 0) & torch.isfinite(n_t) & torch.isfinite(d_t)
        num = torch.where(ok, self.beta * self.num + (1 - self.beta) * n_t, self.num)
        den = torch.where(ok, self.beta * self.den + (1 - self.beta) * d_t, self.den)
        eta = self.scale * num / torch.where(den > 0, den, 1.0)
        capped = torch.minimum(torch.maximum(eta, lr_t / self.max_factor), lr_t * self.max_factor)
        # 1) a skipped sample keeps the rate in force; 2) the first sets it outright (first_outright);
        # 3) every other one moves it at most max_factor-fold
        new = torch.where(ok, torch.where(self.seen | (not self.first_outright), capped, eta), lr_t)
        self.num, self.den, self.seen = num, den, self.seen | ok
        return learning_rate(1.0 / new, min_lr=self.min_lr, max_lr=self.max_lr)

    def state_dict(self) -> dict[str, Any]:
        if self.num is None:
            return {"num": None, "den": None, "seen": False}
        return {"num": float(self.num), "den": float(self.den), "seen": bool(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num"] is None:
            self.num = self.den = self.seen = None
            return
        self.num = torch.tensor(state["num"], dtype=torch.float64)
        self.den = torch.tensor(state["den"], dtype=torch.float64)
        self.seen = torch.tensor(bool(state["seen"]))
