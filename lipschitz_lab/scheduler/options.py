"""The option groups of :class:`~lipschitz_lab.scheduler.LipschitzLR` and its choice lists."""
from __future__ import annotations

from dataclasses import dataclass

from lipschitz_lab.bounds import VARIANTS
from lipschitz_lab.probe.spectral import SIGMA_METHODS

__all__ = ["BOUNDS", "CURVATURE_BOUNDS", "RECOMPUTE", "CurvatureOptions", "EMAOptions", "SmoothOptions"]

#: rates from the whole network's measured curvature (docs/curvature.md): ``curvature``, lr = c/λ_max;
#: ``directional``, the minimum of the quadratic along the step (GeN/CDAT-like)
CURVATURE_BOUNDS = ("curvature", "directional")
#: what L is: a Lipschitz bound of the loss (``bounds.VARIANTS``), ``smooth``: lr = c/β, or a curvature rule
BOUNDS = (*VARIANTS, "smooth", *CURVATURE_BOUNDS)
#: when the rate is recomputed: once per epoch (the paper) or every step
RECOMPUTE = ("epoch", "step")


@dataclass(frozen=True)
class EMAOptions:
    """The follow-up paper's EMAs of L (``variant_optimizer`` momentum, rmsprop, adam)."""

    beta: float = 0.9               # momentum's and RMSprop's EMA (the paper's β)
    beta1: float = 0.9              # Adam's first-moment EMA
    beta2: float = 0.999            # Adam's second-moment EMA
    eps: float = 1e-8               # added under RMSprop's and Adam's square roots
    bias_correction: bool = False   # divide by 1 - β^t (the paper does not)


@dataclass(frozen=True)
class SmoothOptions:
    r"""``bound="smooth"``: lr = c/β with β = S₂·σ_max([A, 1])² + λ, the smoothness of the
    loss in the last layer's weights and bias (S₂: the derived sup of the second derivative).

    .. math::

        lr = \frac{c}{\beta} \quad (\mu = 0), \qquad
        lr = \frac{c}{2}\cdot\frac{2(1+\mu)}{\beta} \quad \text{(heavy ball, momentum } \mu)

    c = 1 is gradient descent's classic safe step on an L-smooth function; c = 2 is the
    edge of stability; the heavy-ball case uses the quadratic stability limit 2(1+μ)/β.
    """

    c: float = 1.0                  # 1: the classic step; 2: the edge of stability
    sigma: str = "power"            # σ_max by power iteration ("frobenius": a cheaper upper bound)
    power_iters: int = 4            # per step, warm-started from the previous step's vector
    layerwise: bool = False         # a rate per Linear layer (scheduler/layerwise.py; one param group each)

    def __post_init__(self):
        if not self.c > 0:
            raise ValueError(f"smooth c must be > 0; got c={self.c!r}")
        if self.sigma not in SIGMA_METHODS:
            raise ValueError(f"smooth sigma must be one of {', '.join(SIGMA_METHODS)}; "
                             f"got sigma={self.sigma!r}")

    def c_eff(self, momentum: float) -> float:
        """The numerator of the rate: c·(1 + μ)."""
        return self.c * (1.0 + momentum)


@dataclass(frozen=True)
class CurvatureOptions:
    r"""The curvature instruments (``sharpness_every``) and the rules that read them.

    ``bound="curvature"``: :math:`lr = c(1+\mu)/(\lambda_{\max} + \lambda)`, set at each measured
    step from that step's Hessian and held in between.  ``bound="directional"``:
    :class:`~lipschitz_lab.probe.curvature_rules.DirectionalRate` along the update taken.
    """

    iters: int = 5                  # Lanczos steps per measurement (5 reads ~98 % of λ_max, RESULTS.md)
    c: float = 1.0                  # curvature: 1 is GD's classic step, half the edge of stability
    scale: float = 1.0              # directional: 1 lands at the minimum along the step (GeN), 2 is CDAT's
    beta: float = 0.9               # directional: EMA of numerator and denominator
    rows: int | None = None         # measure on the batch's first rows only (cheaper, biased up)

    def __post_init__(self):
        for name in ("c", "scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"curvature {name} must be > 0; got {name}={getattr(self, name)!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"sharpness_iters must be an integer >= 1; got sharpness_iters={self.iters!r}")
