r"""A last layer whose weight is tied to another module: its own share of the gradient.

A language model's ``lm_head`` often shares its weight with the token embedding
(weight tying).  The shared tensor's ``.grad`` is then the sum of both uses, so it
is not the gradient the bound speaks of.  The last layer's own share is
:math:`\partial E/\partial W = \delta^\top A`, with :math:`\delta = \partial E/\partial z`
at its output and A its input (every position a row); the probe measures
:math:`\max|\delta^\top A|` from its hooks, at the cost of one more (V × d) matmul per
backward, the same as the layer's own weight gradient.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["tied_parameters", "OwnGradient"]


def tied_parameters(model: nn.Module, layer: nn.Module) -> set[int]:
    """The ids of ``layer``'s parameters that another module of ``model`` also holds."""
    own = {id(p) for p in layer.parameters(recurse=False)}
    tied: set[int] = set()
    for mod in model.modules():
        if mod is not layer:
            tied |= own & {id(p) for p in mod.parameters(recurse=False)}
    return tied


class OwnGradient:
    r""":math:`\max|\sum_b \delta_b^\top A_b|` over a step's backward passes b (gradient
    accumulation adds them up, as ``.grad`` does), in float32 or wider, unscaled."""

    def __init__(self, grad_scale: Callable[[], torch.Tensor | None] | None = None):
        self.grad_scale = grad_scale
        self._sum: torch.Tensor | None = None

    def capture(self, a: torch.Tensor, out: torch.Tensor) -> None:
        A = a.detach().reshape(-1, a.shape[-1])

        def on_grad(grad: torch.Tensor) -> None:
            with torch.no_grad():
                delta = grad.detach().reshape(-1, grad.shape[-1]).float()
                own = delta.T @ A.float()
                scale = self.grad_scale() if self.grad_scale is not None else None
                if scale is not None:
                    own = own / scale.float()
                self._sum = own if self._sum is None else self._sum + own
        out.register_hook(on_grad)

    def take(self, device) -> torch.Tensor:
        """The step's maximum (0 when no backward reached the layer); starts the next step."""
        done, self._sum = self._sum, None
        if done is None:
            return torch.zeros((), dtype=torch.float64, device=device)
        return done.abs().max().double()
