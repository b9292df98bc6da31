r"""The rate's math: L (or β) from statistics, the follow-up paper's EMAs, the clamp.

.. math::

    L = c_\text{loss}\, L_\text{bound}(K_z, m, k, K_a, \|y\|) + \lambda \max\|w\|, \qquad
    \beta = c_\text{loss}\, S_2(m)\, \sigma_{\max}([A, 1])^2 + \lambda, \qquad
    lr = \operatorname{clamp}\!\left(\frac{1}{D}\right)

with D = L for plain SGD, the EMA's denominator for the follow-up paper's optimizers
(:class:`~lipschitz_lab.optim_variants.BoundEMA`), and β/(c(1+μ)) for ``bound="smooth"``.
Each formula is written once here, on top of the generated functions of
:mod:`lipschitz_lab.bounds`; the clamp is :func:`lipschitz_lab.bounds.learning_rate`.
Statistics are plain floats (a record) or 0-d device tensors (the rate, no sync).
"""
from __future__ import annotations

from typing import Any

import torch

from lipschitz_lab.bounds import VARIANTS, bound_inputs, learning_rate, lipschitz_bound, smoothness_bound
from lipschitz_lab.bounds import supremum
from lipschitz_lab.optim_variants import BoundEMA
from lipschitz_lab.scheduler.checks import defined
from lipschitz_lab.probe.curvature_rules import DirectionalRate, curvature_rate
from lipschitz_lab.scheduler.options import CURVATURE_BOUNDS, CurvatureOptions, EMAOptions, SmoothOptions

__all__ = ["RateRule"]


def _tensor(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64)
    return torch.tensor(float(x), dtype=torch.float64, device=device)


class RateRule:
    """What L, β and the rate are for one loss, bound and optimizer (no state but the EMAs)."""

    def __init__(self, loss: str, bound: str, kz: str, *, num_classes: int | None, eps: float | None,
                 loss_scale: float, min_lr: float | None, max_lr: float | None, variant_optimizer: str,
                 ema: EMAOptions, smooth: SmoothOptions, momentum: float,
                 curvature: CurvatureOptions = CurvatureOptions()):
        self.loss, self.bound, self.kz = loss, bound, kz
        self.num_classes, self.eps, self.loss_scale = num_classes, eps, loss_scale
        self.min_lr, self.max_lr = min_lr, max_lr
        self.variant_optimizer, self.smooth, self.momentum = variant_optimizer, smooth, momentum
        self.needs = bound_inputs(loss)
        self.variants = [v for v in VARIANTS if defined(loss, v)]   # no paper bound for some losses
        self.curvature = curvature
        # the first sample is capped too: it follows the warm start c/λ_max of the first measurement
        self.directional = DirectionalRate(curvature.scale, curvature.beta, min_lr=min_lr, max_lr=max_lr,
                                           first_outright=False) if bound == "directional" else None
        if bound not in ("smooth", *CURVATURE_BOUNDS) and bound not in self.variants:
            raise ValueError(f"bound={bound!r}: the paper gives no bound for loss={loss!r}; "
                             f"use bound='corrected' or 'strict'")
        self.ema = BoundEMA(variant_optimizer, beta=ema.beta, beta1=ema.beta1, beta2=ema.beta2,
                            eps=ema.eps, bias_correction=ema.bias_correction)

    def _params(self, K_a=None, y_norm=None) -> dict[str, Any]:
        extra = {"k": self.num_classes, "eps": self.eps, "K_a": K_a, "y_norm": y_norm}
        return {n: extra[n] for n in self.needs}

    # -- the formulas, once ---------------------------------------------------------------
    def L(self, variant: str, stats: dict[str, Any], lam, w_max):
        """L of ``variant`` for the statistics (floats or tensors), ``loss_scale`` included."""
        K_z, m = stats[f"K_z_{self.kz}"], stats["m"]
        params = self._params(stats.get("K_a"), stats.get("y_norm"))
        L = lipschitz_bound(self.loss, variant, K_z=K_z, m=m, lam=lam, w_max=w_max, kz=self.kz, **params)
        if self.loss_scale == 1.0:
            return L
        L0 = lipschitz_bound(self.loss, variant, K_z=K_z, m=m, kz=self.kz, **params)
        return self.loss_scale * L0 + (L - L0)

    def beta(self, m, lam, *, sigma=None, sigma_sq=None):
        r"""β = loss_scale·S₂(m)·σ_max² + λ, from σ_max or from σ² (one per layer for the
        layer-wise rule); numbers or tensors."""
        own = {n: v for n, v in self._params().items() if n in ("k", "eps")}
        S2 = smoothness_bound(self.loss, m=m, **own)
        scaled = self.loss_scale * S2
        return (scaled * sigma * sigma if sigma_sq is None else scaled * sigma_sq) + lam

    def beta_of(self, stats: dict[str, Any], lam):
        """β of a step's statistics, or None when σ_max was not measured."""
        sigma = stats.get("sigma_max")
        return None if sigma is None else self.beta(stats["m"], lam, sigma=sigma)

    def sup_per_term(self) -> float | None:
        """sup |∂e/∂z| of one term (m = 1), for the target-free check; None when it needs ‖y‖."""
        if "y_norm" in self.needs or "K_a" in self.needs:
            return None
        return float(supremum(self.loss, m=1, **self._params()))

    def c_eff(self) -> float:
        return self.smooth.c_eff(self.momentum)

    # -- the rate ---------------------------------------------------------------------------
    def vector(self, stats: dict[str, Any], w_max, lam: float, device) -> torch.Tensor:
        """``[lr, K_z, L, clamp code]`` (float64, on the device) from statistics, tensors or floats.

        L is the bound that set the rate (β for ``bound="smooth"``)."""
        K_z = _tensor(stats[f"K_z_{self.kz}"], device)
        if self.bound == "smooth":
            if stats.get("sigma_max") is None:
                raise ValueError("bound='smooth' needs sigma_max; the probe did not measure it")
            L = _tensor(self.beta_of(stats, lam), device)
            D = L / self.c_eff()
        else:
            L = self.L(self.bound, stats, lam, w_max)
            L_wd = L - self.L(self.bound, stats, 0.0, 0.0) if lam and self.variant_optimizer in (
                "rmsprop", "adam") else 0.0
            D = _tensor(self.ema.update(L, L_wd), device)
        lr, code = learning_rate(D, min_lr=self.min_lr, max_lr=self.max_lr, K_z=K_z)
        return torch.stack([lr, K_z.to(device), _tensor(L, device), code])

    def curvature_vector(self, lambda_max: torch.Tensor, lam: float,
                         held: torch.Tensor | None) -> torch.Tensor:
        r"""``bound="curvature"``: lr = c(1+μ)/(λ_max + λ) as a rate vector (K_z: NaN, L = λ_max + λ);
        a measurement that is not finite keeps the rate ``held`` in force."""
        L = lambda_max.to(torch.float64) + lam
        lr, code = curvature_rate(L, self.curvature.c, self.momentum, self.min_lr, self.max_lr)
        new = torch.stack([lr, torch.full_like(lr, float("nan")), L, code])
        return new if held is None else torch.where(torch.isfinite(L), new, held)

    def directional_vector(self, last: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
        """``bound="directional"``: the next rate from the step just taken (DirectionalRate)."""
        lr, code = self.directional.update(last["slope"], last["curv"], last["lr"])
        L = last["lambda_max"].to(torch.float64) + lam
        return torch.stack([lr, torch.full_like(lr, float("nan")), L, code])

    def layer_vector(self, stats: dict[str, Any], layer_sigma_sq: torch.Tensor, group_layer: list[int],
                     lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer-wise rule: (group 0's rate vector, every group's rate, β per layer)."""
        betas = self.beta(stats["m"], lam, sigma_sq=layer_sigma_sq)
        per_group = betas[group_layer] / self.c_eff()
        K_z = stats[f"K_z_{self.kz}"]
        lr, code = learning_rate(per_group, min_lr=self.min_lr, max_lr=self.max_lr, K_z=K_z)
        return torch.stack([lr[0], K_z.to(lr.dtype), betas[group_layer[0]], code[0]]), lr, betas
