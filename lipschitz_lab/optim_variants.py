r"""The follow-up paper's rates for momentum, RMSprop and Adam.

Yedida, Saha & Prashanth, "LipschitzLR: Using theoretically computed adaptive
learning rates for fast convergence", Applied Intelligence (2021).  Each
method keeps exponential moving averages of the bound L (one update per
recompute: per epoch, or per step under ``recompute="step"``) and turns them
into a rate.  :class:`BoundEMA` returns the *denominator* D with lr = 1/D, so
that the clamps of :func:`lipschitz_lab.bounds.learning_rate` apply alike.

.. math::

    \text{sgd:}\quad & lr = 1/L \\
    \text{momentum:}\quad & K \leftarrow \beta K + (1-\beta) L, \quad lr = 1/\hat K \\
    \text{rmsprop:}\quad & K \leftarrow \beta K + (1-\beta) L^2_*, \quad lr = \sqrt{\hat K + \epsilon}\,/\,L \\
    \text{adam:}\quad & K_1 \leftarrow \beta_1 K_1 + (1-\beta_1) L, \quad
        K_2 \leftarrow \beta_2 K_2 + (1-\beta_2) L^2_*, \quad
        lr = (\sqrt{\hat K_2} + \epsilon)\,/\,\hat K_1

where:
    - :math:`L = L_0 + \lambda\max\|w\|` is the bound of the configured
      variant, :math:`L_0` the same bound with :math:`\lambda = 0`;
    - :math:`L^2_* = L^2 - (\lambda\max\|w\|)^2 = L_0^2 + 2 L_0 \lambda\max\|w\|`,
      the paper's square, which drops the :math:`\lambda^2\max\|w\|^2` term
      (keeping it made the rate diverge);
    - :math:`\hat K = K / (1-\beta^t)` with bias correction (t = number of
      updates), else :math:`\hat K = K`; likewise :math:`\hat K_1, \hat K_2`;
    - β = 0.9, β1 = 0.9, β2 = 0.999 as in the paper; the momentum step is V/K
      with the optimizer's own momentum buffer V.
"""
from __future__ import annotations

import math

__all__ = ["OPTIMIZERS", "BoundEMA"]

#: the optimizers a run can use, each with its own Lipschitz rate (the one list of them)
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")


def _sqrt(x):
    """math.sqrt for a float, Tensor.sqrt for a tensor: L may be either (the rate stays on the device)."""
    return x.sqrt() if hasattr(x, "sqrt") else math.sqrt(x)


class BoundEMA:
    """EMAs of L for one variant optimizer (see the module docstring)."""

    def __init__(self, variant: str = "sgd", *, beta: float = 0.9, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, bias_correction: bool = False):
        if variant not in OPTIMIZERS:
            raise ValueError(f"variant_optimizer must be one of {', '.join(OPTIMIZERS)}; "
                             f"got variant_optimizer={variant!r}")
        for name, b in (("beta", beta), ("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {name}={b!r}")
        if eps < 0:
            raise ValueError(f"ema_eps must be >= 0; got ema_eps={eps!r}")
        self.variant = variant
        self.beta, self.beta1, self.beta2, self.eps = beta, beta1, beta2, eps
        self.bias_correction = bias_correction
        self.K = self.K1 = self.K2 = 0.0
        self.t = 0

    def _hat(self, K: float, beta: float) -> float:
        return K / (1.0 - beta ** self.t) if self.bias_correction else K

    def update(self, L: float, L_wd: float = 0.0) -> float:
        """Fold in a new bound L (``L_wd`` = its λ·max‖w‖ part); return D, lr = 1/D."""
        if self.variant == "sgd":
            return L
        self.t += 1
        L_sq = L * L - L_wd * L_wd            # the paper's L², cross term λ²‖w‖² dropped
        if self.variant == "momentum":
            self.K = self.beta * self.K + (1 - self.beta) * L
            return self._hat(self.K, self.beta)
        if self.variant == "rmsprop":
            self.K = self.beta * self.K + (1 - self.beta) * L_sq
            return L / _sqrt(self._hat(self.K, self.beta) + self.eps)
        self.K1 = self.beta1 * self.K1 + (1 - self.beta1) * L
        self.K2 = self.beta2 * self.K2 + (1 - self.beta2) * L_sq
        return self._hat(self.K1, self.beta1) / (_sqrt(self._hat(self.K2, self.beta2)) + self.eps)

    def state_dict(self) -> dict[str, float | int]:
        return {"K": self.K, "K1": self.K1, "K2": self.K2, "t": self.t}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.K, self.K1, self.K2 = float(state["K"]), float(state["K1"]), float(state["K2"])
        self.t = int(state["t"])
