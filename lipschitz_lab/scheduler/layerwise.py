r"""A rate for every layer from the same hooks: the layer-wise Gauss–Newton smoothness bound.

For a chain of Linear layers with 1-Lipschitz activations between them (ReLU, tanh,
sigmoid, leaky ReLU with slope ≤ 1; Dropout, whose train-mode factor is 1/(1−p)),
layer ℓ maps its input :math:`A_\ell` to :math:`Z_\ell = A_\ell W_\ell^\top + b_\ell`, and

.. math::

    \beta_\ell = S_2 \cdot \sigma_{\max}([A_\ell, 1])^2 \cdot
        \prod_{j > \ell} \big(\rho_j \|W_j\|_2\big)^2, \qquad lr_\ell = \frac{c}{\beta_\ell + \lambda}

where :math:`S_2` is the loss's derived second-derivative supremum and
:math:`\rho_j` the Dropout factor before layer j.  Within one activation pattern a
ReLU network is linear in :math:`W_\ell`, so the Hessian of the loss in that layer's
weights is its Gauss–Newton part :math:`\sum_i \tilde a_i\tilde a_i^\top \otimes
J_i^\top H_i J_i`, and :math:`\|J_i\| \le \prod_{j>\ell}\rho_j\|W_j\|_2`,
:math:`\|H_i\| \le S_2`.  For the last layer the product is empty and
:math:`\beta_L` is the smoothness bound of :mod:`lipschitz_lab.probe.spectral`.

Assumptions and where it fails (docs/smoothness.md): it bounds each layer's own block
of the Hessian, not the coupling between layers (a joint step with every layer at its
own 1/β_ℓ is the block-diagonal approximation; dividing each rate by the number of
layers would make the joint step provably safe); it needs the chain structure, so
convolutions, BatchNorm, residual connections and attention are refused by name; and
the product of weight norms grows with depth, so deep layers' rates become small.
"""
from __future__ import annotations

import torch
from torch import nn

from lipschitz_lab.probe.spectral import PowerIteration

__all__ = ["LayerwiseSmoothness"]

#: activations that are 1-Lipschitz elementwise (so they do not grow the Jacobian)
_ONE_LIPSCHITZ = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Flatten, nn.GELU, nn.SiLU)


class _WeightNorm:
    """‖W‖₂ by power iteration on WᵀW, warm-started (one matvec pair per step)."""

    def __init__(self):
        self.v: torch.Tensor | None = None

    @torch.no_grad()
    def norm_sq(self, W: torch.Tensor) -> torch.Tensor:
        W = W.detach().float()
        v = self.v if self.v is not None and self.v.shape[0] == W.shape[1] else torch.full(
            (W.shape[1],), W.shape[1] ** -0.5, device=W.device)
        for _ in range(2):
            w = W.T @ (W @ v)
            v = w / w.norm().clamp_min(1e-30)
        self.v = v
        return (W @ v).square().sum().double()


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules in order; refuses the layers the bound does not cover, by name."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children()) and n]
    for name, mod in leaves:
        ok = isinstance(mod, (nn.Linear, nn.Dropout, *_ONE_LIPSCHITZ)) or (
            isinstance(mod, nn.LeakyReLU) and abs(mod.negative_slope) <= 1)
        if not ok:
            raise ValueError(f"layerwise=True covers chains of Linear layers and 1-Lipschitz activations; "
                             f"layer {name!r} is {type(mod).__name__} (see docs/smoothness.md)")
    return leaves


class LayerwiseSmoothness:
    """Hooks on every Linear layer of a chain; :meth:`betas` gives β_ℓ / S₂ per layer (device)."""

    def __init__(self, model: nn.Module, power_iters: int = 4):
        leaves = _chain(model)
        self.names = [n for n, m in leaves if isinstance(m, nn.Linear)]
        if not self.names:
            raise ValueError("layerwise=True: the model has no nn.Linear")
        self.layers = [m for n, m in leaves if isinstance(m, nn.Linear)]
        # the dropout factor in front of each Linear layer (train mode scales by 1/(1-p))
        self.rho, factor = [], 1.0
        for _, mod in leaves:
            if isinstance(mod, nn.Dropout):
                factor /= 1.0 - mod.p
            if isinstance(mod, nn.Linear):
                self.rho.append(factor)
                factor = 1.0
        self._power = [PowerIteration(power_iters) for _ in self.layers]
        self._norms = [_WeightNorm() for _ in self.layers]
        self._sigma_sq: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, i: int):
        @torch.compiler.disable
        def on_forward(module, args, output):
            if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
                s = self._power[i].sigma_sq(args[0])
                self._sigma_sq[i] = s if self._sigma_sq[i] is None else self._sigma_sq[i] + s
        return on_forward

    def group_layers(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """The layer of each param group (every group must hold exactly one layer's parameters)."""
        owner = {id(p): i for i, layer in enumerate(self.layers) for p in layer.parameters()}
        out = []
        for g, group in enumerate(optimizer.param_groups):
            layers = {owner.get(id(p)) for p in group["params"]}
            if len(layers) != 1 or None in layers:
                raise ValueError(f"layerwise=True needs one param group per Linear layer; group {g} holds "
                                 f"{'parameters of no Linear layer' if None in layers else 'several layers'}")
            out.append(layers.pop())
        return out

    def betas(self) -> torch.Tensor:
        """σ_max([A_ℓ, 1])² · Π_{j>ℓ} (ρ_j‖W_j‖₂)² per layer (multiply by S₂); resets the step."""
        sq = [n.norm_sq(layer.weight) * r * r for n, layer, r in zip(self._norms, self.layers, self.rho)]
        sigma = torch.stack([s if s is not None else torch.zeros_like(sq[0]) for s in self._sigma_sq])
        self._sigma_sq = [None] * len(self.layers)
        downstream = torch.ones_like(sigma)
        for i in range(len(self.layers) - 2, -1, -1):            # Π over the layers after ℓ
            downstream[i] = downstream[i + 1] * sq[i + 1]
        return sigma * downstream

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
