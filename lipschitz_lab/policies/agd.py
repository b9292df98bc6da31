r"""AGD, automatic gradient descent (Bernstein, Mingard, Huang, Azizan & Yue 2023), as the policy ``agd``.

Algorithm 1 of the paper ("Automatic Gradient Descent: Deep Learning without
Hyperparameters", arXiv:2304.05187), for weight matrices :math:`W_l \in \mathbb{R}^{d_l \times d_{l-1}}`:

.. math::

    W_l \sim \text{orthogonal}(d_l, d_{l-1}) \cdot \sqrt{d_l / d_{l-1}}, \qquad
    G = \frac{1}{L} \sum_{l=1}^{L} \|\nabla_{W_l} \mathcal{L}\|_F \sqrt{\frac{d_l}{d_{l-1}}}, \qquad
    \eta = \log \frac{1 + \sqrt{1 + 4G}}{2}, \qquad
    W_l \gets W_l - \frac{\eta}{L} \sqrt{\frac{d_l}{d_{l-1}}}
        \frac{\nabla_{W_l}\mathcal{L}}{\|\nabla_{W_l}\mathcal{L}\|_F}

where L is the number of layers.  A convolution is treated as the authors' code does
(jxbz/agd, ``agd.py``): each kernel tap :math:`W[:, :, i, j]` is its own
:math:`d_l \times d_{l-1}` matrix, orthogonal at initialisation, normalised on its own in the
update, with the scale :math:`\sqrt{d_l/d_{l-1}} / \sqrt{k_h k_w}`; its taps' norms add up in G.

The paper's networks have no biases and no affine normalisation (its code raises on a
bias; its ResNets use ``BatchNorm(affine=False)``).  Here a Linear's or Conv's bias is set to 0
and a BatchNorm/LayerNorm/GroupNorm's affine weight and bias to 1 and 0, and all of them are
frozen (``requires_grad=False``): the network AGD trains is the paper's, bias-free and
affine-free; BatchNorm still normalises with its batch statistics.  Any other parameter (an
embedding, say) is refused.  The lab's models keep their plain ReLUs (the authors' fully
connected net multiplies them by √2).

AGD has no learning rate: ``config.lr`` is not used, and the rate a record shows is η.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.policies.base import Policy, PolicyContext, register_policy
from lipschitz_lab.policies.baselines import _plain_sgd_only

__all__ = ["AGD", "agd_layers", "init_orthogonal_", "layer_scale"]

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def layer_scale(weight: torch.Tensor) -> float:
    r""":math:`\sqrt{d_l / d_{l-1}}` of a weight (out, in, *kernel); a convolution's divided by
    :math:`\sqrt{\prod \text{kernel}}`, as in the authors' ``singular_value``."""
    scale = math.sqrt(weight.shape[0] / weight.shape[1])
    return scale / math.sqrt(math.prod(weight.shape[2:]))


@torch.no_grad()
def init_orthogonal_(weight: torch.Tensor) -> torch.Tensor:
    """A uniformly random semi-orthogonal matrix per kernel tap, times :func:`layer_scale`."""
    taps = weight.reshape(weight.shape[0], weight.shape[1], -1)
    for t in range(taps.shape[2]):
        q = torch.empty(weight.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device)
        nn.init.orthogonal_(q)
        taps[:, :, t].copy_(q)
    weight.copy_(taps.reshape(weight.shape) * layer_scale(weight))
    return weight


def agd_layers(model: nn.Module) -> list[torch.Tensor]:
    """The weights AGD trains; biases and norm layers' affine parameters are set to 0 (1 for a
    norm's weight) and frozen.  Raises ConfigError, before changing anything, on any other
    trainable parameter."""
    weights: list[torch.Tensor] = []
    held: list[tuple[str, torch.Tensor]] = []
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(mod, LAYERS) and p_name == "weight":
                weights.append(p)
            elif isinstance(mod, LAYERS + NORMS) and p_name in ("bias", "weight"):
                held.append((p_name, p))
            else:
                raise ConfigError(f"lr_policy='agd': parameter {name!r} of {type(mod).__name__} is not a "
                                  "Linear/Conv weight, bias or norm parameter; AGD covers those only")
    if not weights:
        raise ConfigError("lr_policy='agd': the model has no Linear or Conv weight to train")
    with torch.no_grad():
        for p_name, p in held:
            p.fill_(1.0 if p_name == "weight" else 0.0).requires_grad_(False)
    return weights


class AGD(torch.optim.Optimizer):
    r"""Automatic gradient descent on ``weights`` (Linear and Conv weights; see the module).

    ``gain`` multiplies the step (the authors' "experimental acceleration"; 1 is the paper).
    Every number stays on the device: the step does not wait for it.
    """

    def __init__(self, weights, gain: float = 1.0):
        weights = list(weights)
        for w in weights:
            if w.dim() < 2:
                raise ValueError(f"AGD trains weight matrices and kernels; got a tensor of shape "
                                 f"{tuple(w.shape)}")
        if not gain > 0:
            raise ValueError(f"gain must be > 0; got gain={gain!r}")
        super().__init__(weights, {"gain": float(gain)})
        self.depth = len(weights)            # L

    def _weights(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def eta(self) -> torch.Tensor:
        r"""η = log((1 + √(1 + 4G))/2) from the gradients as they are (a 0-d tensor)."""
        weights = [p for p in self._weights() if p.grad is not None]
        if not weights:
            return torch.zeros(())
        G = torch.stack([layer_scale(p) * p.grad.norm(dim=(0, 1)).sum() for p in weights]).sum() / self.depth
        return torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        eta = self.eta()
        gain = self.param_groups[0]["gain"]
        for p in self._weights():
            if p.grad is None:
                continue
            norm = p.grad.norm(dim=(0, 1), keepdim=True)
            # a zero gradient (a dead layer) takes no step, as the authors' nan_to_num does
            factor = torch.where(norm > 0, layer_scale(p) / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)
            p.sub_(gain * eta / self.depth * factor * p.grad)
        return loss


class _AGDPolicy(Policy):
    def current_lr(self) -> float:
        """η of the step about to be taken (the trainer asks between backward and step; syncs)."""
        return float(self.optimizer.eta())


@register_policy("agd")
def agd(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """AGD (Bernstein et al. 2023): orthogonal init, no hyperparameters; biases and affine norms frozen."""
    _plain_sgd_only(config, "agd")
    if config.weight_decay:
        raise ConfigError(f"weight_decay={config.weight_decay!r}: lr_policy='agd' has no weight decay; "
                          "leave it 0")
    weights = agd_layers(model)
    for w in weights:
        init_orthogonal_(w)
    return _AGDPolicy(AGD(weights), info={"depth": len(weights), "gain": 1.0,
                                          "frozen": "biases = 0, norm affine = (1, 0)"})
