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
Both factors are measured from above on every step: σ_max by the probe's Collatz–Wielandt
power iteration, ‖W_j‖₂ by :func:`weight_norm_sq` (a trace of a power of the Gram matrix),
so β_ℓ is an upper bound of that Gauss–Newton bound, not an estimate of it.

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

__all__ = ["LayerwiseSmoothness", "weight_norm_sq", "SQUARINGS"]

#: activations that are 1-Lipschitz elementwise (so they do not grow the Jacobian)
_ONE_LIPSCHITZ = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Flatten, nn.GELU, nn.SiLU)


#: squarings of the Gram matrix in :func:`weight_norm_sq`: k = 2**5 = 32, so the bound is at most
#: rank**(1/32) times ‖W‖₂² (≤ 1.14 for rank 64, ≤ 1.22 for rank 512), and within 1 % on trained MLPs
SQUARINGS = 5


@torch.no_grad()
def weight_norm_sq(W: torch.Tensor, squarings: int = SQUARINGS) -> torch.Tensor:
    r"""An upper bound on :math:`\|W\|_2^2`, as a float64 0-d tensor on W's device (no sync).

    .. math::

        \|W\|_2^2 = \lambda_{\max}(G) \le \operatorname{tr}(G^k)^{1/k} \le r^{1/k}\,\lambda_{\max}(G),
        \qquad G = W W^\top \text{ or } W^\top W \text{ (the smaller)},\ k = 2^{\text{squarings}}

    because :math:`\operatorname{tr}(G^k) = \sum_i \lambda_i^k` for the PSD G of rank r.  G^k
    comes from repeated squaring, each square divided by its trace :math:`t_j` so nothing
    overflows: :math:`\operatorname{tr}(G^k)^{1/k} = t_0 \prod_{j=1}^{p} t_j^{2^{-j}}`.  Unlike
    a power iteration (which approaches ‖W‖₂ from below), it bounds ‖W‖₂ on every step, from
    the weights alone: there is no state to carry across steps or into a checkpoint.  Float64:
    the bound holds to rounding.
    """
    W = W.detach().double()
    G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    t0 = torch.diagonal(G).sum()
    M = G / t0.clamp_min(torch.finfo(G.dtype).tiny)
    log_bound = torch.log(t0)
    for j in range(1, squarings + 1):
        M = M @ M
        t = torch.diagonal(M).sum()
        M = M / t
        log_bound = log_bound + torch.log(t) / 2 ** j
    return torch.where(t0 > 0, torch.exp(log_bound), torch.zeros_like(t0))


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
        sq = [weight_norm_sq(layer.weight) * r * r for layer, r in zip(self.layers, self.rho)]
        sigma = torch.stack([s if s is not None else torch.zeros_like(sq[0]) for s in self._sigma_sq])
        self._sigma_sq = [None] * len(self.layers)
        downstream = torch.ones_like(sigma)
        for i in range(len(self.layers) - 2, -1, -1):            # Π over the layers after ℓ
            downstream[i] = downstream[i + 1] * sq[i + 1]
        return sigma * downstream

    def state_dict(self) -> dict:
        """The warm-start vector of every layer's σ_max power iteration and the step's sums so far,
        as plain numbers: a resume continues them, so its records equal an uninterrupted run's.
        (The weight norms keep no state.)"""
        return {"power_v": [None if p.v is None else p.v.tolist() for p in self._power],
                "sigma_sq": [None if s is None else s.item() for s in self._sigma_sq]}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        if len(state["power_v"]) != len(self._power):
            raise ValueError(f"layerwise state for {len(state['power_v'])} layers; this model has "
                             f"{len(self._power)} Linear layers")
        for p, v in zip(self._power, state["power_v"]):
            p.v = None if v is None else torch.tensor(v, dtype=torch.float64, device=device)
        self._sigma_sq = [None if s is None else torch.tensor(s, dtype=torch.float64, device=device)
                          for s in state.get("sigma_sq", [None] * len(self._power))]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
