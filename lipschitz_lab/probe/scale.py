r"""Is the loss being minimised the one the bound was derived for?  The loss-scale check.

Each bound is derived for one exact loss E: the mean over the batch (½·MSE for
``mse``).  A user's ``nn.MSELoss()`` has twice that gradient, ``reduction="sum"``
m times it, gradient accumulation over N micro-batches without dividing each
loss by N has N times it.  The bound then no longer bounds anything.

On a check step the probe keeps the last layer's output z and, through a
tensor hook on it, the real :math:`g = \partial E_\text{user}/\partial z` of the
same backward pass (no extra pass).  The oracle is the derived gradient
:math:`o` from the generated ``dE/dz`` (:func:`lipschitz_lab.losses.grad_logits`,
with m = 1, i.e. per row) and the step's targets.  The scale the user's loss
applies is the least-squares factor

.. math::

    c = m \cdot \frac{\langle g, o\rangle}{\langle o, o\rangle}, \qquad
    \text{residual} = \frac{\|g - (c/m)\, o\|}{\|g\|}

with m the rows this process measured (under DDP each rank's loss is its own
mean; DDP averages the parameter gradients, not the logits').  The three dot
products stay on the device; :func:`verdict` reads them at the next flush.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["ScaleCheck", "verdict", "SCALE_TOL", "RESIDUAL_TOL"]

#: |c / loss_scale - 1| above this is a different loss.  The real and the derived gradient agree
#: to float32 rounding (~1e-7) and, under bf16 autocast, to ~4e-3 per element, far below 5%;
#: the smallest wrong factor in practice is 2 (nn.MSELoss, two micro-batches), far above it.
SCALE_TOL = 0.05
#: a residual above this means the gradient is not a multiple of the derived one at all
RESIDUAL_TOL = 0.05


class ScaleCheck:
    """Captures (z, g, y) on armed steps and reduces them to three device numbers."""

    def __init__(self, loss: str, **params: Any):
        self.loss, self.params = loss, params
        self.armed = False
        self._z: list[torch.Tensor] = []
        self._g: list[torch.Tensor | None] = []
        self._y: list[torch.Tensor] = []

    def capture(self, out: torch.Tensor) -> None:
        if not self.armed or not out.requires_grad:
            return
        i = len(self._z)
        self._z.append(out.detach())
        self._g.append(None)

        def keep(grad, i=i):
            self._g[i] = grad.detach() if self._g[i] is None else self._g[i] + grad.detach()
        out.register_hook(keep)

    def targets(self, y: torch.Tensor) -> None:
        if self.armed:
            self._y.append(y.detach())

    def reduce(self) -> torch.Tensor | None:
        """``[<g, o>, <o, o>, <g, g>]`` (float64, on the device) over this step's forwards, or None."""
        from lipschitz_lab.losses import grad_logits
        z, g, y = self._z, self._g, self._y
        self._z, self._g, self._y = [], [], []
        if not z or len(y) != len(z) or any(t is None for t in g):
            return None
        sums = []
        for zi, gi, yi in zip(z, g, y):
            o = grad_logits(self.loss, zi.double(), yi.reshape(-1) if zi.shape[-1] > 1 else yi, m=1,
                            **self.params).reshape(gi.shape)
            gd = gi.double()
            sums.append(torch.stack([(gd * o).sum(), (o * o).sum(), (gd * gd).sum()]))
        return torch.stack(sums).sum(0)


def verdict(check: dict[str, float], loss: str, loss_scale: float) -> str | None:
    """None when the loss is the derived one times ``loss_scale``; else the one-line error."""
    ro, oo, rr, m = check["ro"], check["oo"], check["rr"], check["m"]
    if not all(math.isfinite(v) for v in (ro, oo, rr)) or oo <= 0 or rr <= 0:
        return None               # nothing to compare (a zero gradient); NaN is the divergence check's
    c = m * ro / oo
    residual = math.sqrt(max(rr - ro * ro / oo, 0.0) / rr)
    if residual > RESIDUAL_TOL:
        return (f"loss={loss!r}: the gradient at the logits is not a multiple of the derived loss's "
                f"(relative residual {residual:.3g}); the criterion is not {loss!r}: use "
                f"lipschitz_lab.losses.make_criterion({loss!r}) or register your own LossSpec")
    if abs(c / loss_scale - 1.0) > SCALE_TOL:
        return (f"loss={loss!r}: your loss is {c:.4g} times the loss the bound was derived for "
                f"(mean over the batch{', ½·MSE' if loss == 'mse' else ''}); the bound would not hold. "
                f"Use lipschitz_lab.losses.make_criterion({loss!r}), or pass loss_scale={_nice(c)} "
                f"to LipschitzLR (reduction='sum' and undivided gradient accumulation give m or N)")
    return None


def _nice(c: float) -> str:
    r = round(c)
    return str(r) if r and abs(c / r - 1.0) < 1e-3 else f"{c:.4g}"
