r"""Is the loss being minimised the one the bound was derived for?  The loss-scale check.

Each bound is derived for one exact loss E: the mean over the terms it averages
(½·MSE for ``mse``).  A user's ``nn.MSELoss()`` has twice that gradient,
``reduction="sum"`` m times it, gradient accumulation over N micro-batches without
dividing each loss by N has N times it.  The bound then no longer bounds anything.

On a check step the probe keeps the last layer's output z and, through a tensor hook
on it, the real :math:`g = \partial E_\text{user}/\partial z` of the same backward pass
(no extra pass), divided by the GradScaler's scale of that backward when there is one.
Two checks read it:

1. **Target-free**, always: the bound needs :math:`|g_{ij}| \le c\,S/m` for every entry,
   with S the derived supremum of :math:`|\partial e/\partial z|` per term and m the
   terms the loss averages.  ``gz_max`` = max |g| is held to that.
2. **Exact**, when the step's targets reached the probe (``wrap_loss``, ``observe``): the
   derived gradient :math:`o` per term (:func:`lipschitz_lab.losses.grad_logits`, m = 1,
   ignored targets zero) gives the scale the user's loss applies, the least-squares factor

.. math::

    c = m \cdot \frac{\langle g, o\rangle}{\langle o, o\rangle}, \qquad
    \text{residual} = \frac{\|g - (c/m)\, o\|}{\|g\|}

with m the terms this process counted (under DDP each rank's loss is its own mean).
For softmax cross-entropy it also fits label smoothing: with :math:`d = m g - o` and
:math:`e = \text{onehot} - 1/k`, :math:`\hat\epsilon = \langle d, e\rangle / \langle e, e\rangle`.
Every number stays on the device; :mod:`.verdict` reads them at the next flush.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lipschitz_lab.probe.layout import Field, StatLayout

__all__ = ["ScaleCheck", "CHECK_LAYOUT"]

#: the check's numbers, by name (the probe's ``check`` field)
CHECK_LAYOUT = StatLayout(Field(n, "local") for n in (
    "targeted",     # 1 when every captured output had its targets (the exact check ran)
    "ro", "oo", "rr",   # <g, o>, <o, o>, <g, g>
    "de", "ee", "dd",   # label smoothing's fit: <d, e>, <e, e>, <d, d>
    "gz_max",       # max |g_ij|, unscaled
    "m",            # the terms this process's loss averages (counted targets, else rows)
))


def _flat(z: torch.Tensor, softmax: bool) -> torch.Tensor:
    return z.reshape(-1, z.shape[-1]) if softmax and z.dim() > 2 else z


class ScaleCheck:
    """Captures (z, g, y) on armed steps and reduces them to :data:`CHECK_LAYOUT` on the device."""

    layout = CHECK_LAYOUT

    def __init__(self, loss: str, *, softmax: bool,
                 grad_scale: Callable[[], torch.Tensor | None] | None = None, **params: Any):
        self.loss, self.softmax, self.params, self.grad_scale = loss, softmax, params, grad_scale
        self.armed = False
        self._z: list[torch.Tensor] = []
        self._g: list[torch.Tensor | None] = []
        self._y: list[torch.Tensor] = []

    def capture(self, out: torch.Tensor) -> None:
        if not self.armed or not out.requires_grad:
            return
        i = len(self._z)
        self._z.append(_flat(out.detach(), self.softmax))
        self._g.append(None)

        def keep(grad, i=i):
            g = _flat(grad.detach(), self.softmax).double()
            scale = self.grad_scale() if self.grad_scale is not None else None
            if scale is not None:       # the GradScaler's scale of this very backward
                g = g / scale.double()
            self._g[i] = g if self._g[i] is None else self._g[i] + g
        out.register_hook(keep)

    def targets(self, y: torch.Tensor) -> None:
        if self.armed:
            self._y.append(y.detach())

    def reduce(self, device) -> torch.Tensor | None:
        """:data:`CHECK_LAYOUT`'s vector over this step's forwards, or None (nothing captured)."""
        z, g, y = self._z, self._g, self._y
        self._z, self._g, self._y = [], [], []
        if not z or any(t is None for t in g):
            return None
        targeted = len(y) == len(z)
        ys = y if targeted else [None] * len(z)
        parts = [self._one(zi, gi, yi) for zi, gi, yi in zip(z, g, ys)]
        total = {name: torch.stack([p[name] for p in parts]).sum() for name in CHECK_LAYOUT.names}
        total["gz_max"] = torch.stack([p["gz_max"] for p in parts]).max()
        total["targeted"] = torch.ones((), dtype=torch.float64, device=device) * float(targeted)
        return CHECK_LAYOUT.pack(total, device=device)

    def _one(self, z: torch.Tensor, g: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        zero = torch.zeros((), dtype=torch.float64, device=g.device)
        out = dict.fromkeys(CHECK_LAYOUT.names, zero)
        out["gz_max"] = g.abs().max()
        rows = g.shape[0] if self.softmax else g.numel()
        out["m"] = zero + rows
        if y is None:
            return out
        from lipschitz_lab.losses import grad_logits
        soft = self.softmax and y.is_floating_point() and y.shape[-1] == z.shape[-1]
        yy = y.reshape(-1, y.shape[-1]) if soft else (y.reshape(-1) if self.softmax else y)
        keep = None if soft or yy.is_floating_point() else yy >= 0       # ignored targets: -100, a -1 pad
        target = yy if keep is None else torch.where(keep, yy, torch.zeros_like(yy))
        o = grad_logits(self.loss, z.double(), target, m=1, **self.params).reshape(g.shape)
        if keep is not None:
            o = o * keep.reshape(-1, *([1] * (o.dim() - 1))).to(o.dtype)
            out["m"] = keep.sum().double()
        out.update(ro=(g * o).sum(), oo=(o * o).sum(), rr=(g * g).sum())
        if self.softmax and keep is not None:
            out.update(self._smoothing(g, o, target, keep, out["m"]))
        return out

    @staticmethod
    def _smoothing(g, o, target, keep, m) -> dict[str, torch.Tensor]:
        """Label smoothing's fit: d = m·g − o against e = onehot − 1/k, on the counted rows."""
        k = g.shape[-1]
        e = torch.nn.functional.one_hot(target, k).to(g.dtype) - 1.0 / k
        e = e * keep.reshape(-1, 1).to(g.dtype)
        d = m * g - o
        return {"de": (d * e).sum(), "ee": (e * e).sum(), "dd": (d * d).sum()}
