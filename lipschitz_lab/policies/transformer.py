"""The baselines a transformer is trained with, registered as policies of :mod:`lipschitz_lab.policies`.

==================  ===============================================  ===================================
policy              optimizer                                        the rate in force
==================  ===============================================  ===================================
adamw_cosine        ``torch.optim.AdamW``, betas (0.9, 0.95), decay  linear warm-up, then cosine to lr/10
                    on matrices only (nanoGPT's ``configure_optimizers``)
schedulefree_adamw  ``schedulefree.AdamWScheduleFree``               lr (warm-up 5 % of the steps)
==================  ===============================================  ===================================

Prodigy (:mod:`.baselines`) is the third; it trains tiny_gpt as it is.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lipschitz_lab.config import TrainConfig
from lipschitz_lab.policies.base import Policy, PolicyContext, register_policy
from lipschitz_lab.policies.baselines import _ScheduleFreePolicy, _plain_sgd_only, schedule_free_eval

__all__ = ["TRANSFORMER_BASELINES", "WARMUP_FRACTION", "MIN_LR_RATIO", "nanogpt_factor", "decay_groups"]

#: the policy names this module registers
TRANSFORMER_BASELINES = ("adamw_cosine", "schedulefree_adamw")
#: nanoGPT's shakespeare_char recipe: 100 warm-up steps of 5000, min_lr = lr / 10 (Chinchilla's advice)
WARMUP_FRACTION, MIN_LR_RATIO = 0.02, 0.1
BETAS = (0.9, 0.95)            # nanoGPT's GPT-2 betas: a shorter second-moment memory than Adam's 0.999


def _total_steps(config: TrainConfig, ctx: PolicyContext) -> int:
    total = config.epochs * ctx.steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return max(1, total)


def nanogpt_factor(it: int, warmup: int, total: int, min_ratio: float = MIN_LR_RATIO) -> float:
    r"""lr(it) / lr, nanoGPT's ``get_lr``.

    .. math::

        \frac{lr_t}{lr} = \begin{cases}
            \frac{t + 1}{w + 1} & t < w \\
            \rho + \tfrac12\bigl(1 + \cos\pi\,\frac{t - w}{N - w}\bigr)(1 - \rho) & w \le t \le N \\
            \rho & t > N
        \end{cases}

    where :math:`w` is the warm-up steps, :math:`N` the decay's last step (all steps of the
    run), :math:`\rho` = min_lr / lr.  Reference: Karpathy, nanoGPT ``train.py``.
    """
    # 1) linear warm-up
    if it < warmup:
        return (it + 1) / (warmup + 1)
    # 2) after the decay: the floor
    if it > total:
        return min_ratio
    # 3) in between, cosine decay down to the floor
    ratio = (it - warmup) / max(1, total - warmup)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1.0 - min_ratio)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """nanoGPT's parameter groups: every tensor of 2 or more dims (matmul weights, embeddings)
    decays; biases and LayerNorm gains do not.  A tied tensor is listed once."""
    params = [p for p in model.parameters() if p.requires_grad]     # parameters() lists a tied one once
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


@register_policy("adamw_cosine")
def adamw_cosine(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """nanoGPT's recipe: AdamW (betas 0.9, 0.95; ``weight_decay`` on matrices only) at peak
    ``config.lr``, linear warm-up over 2 % of the steps, then cosine down to lr/10 at the last step."""
    _plain_sgd_only(config, "adamw_cosine")
    total = _total_steps(config, ctx)
    warmup = math.ceil(WARMUP_FRACTION * total)
    params = decay_groups(model, config.weight_decay)
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    opt = torch.optim.AdamW(params, lr=config.lr, betas=BETAS, **fused)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: nanogpt_factor(it, warmup, total))
    return Policy(opt, schedule, per_step=True,
                  info={"warmup_steps": warmup, "decay_steps": total, "min_lr": config.lr * MIN_LR_RATIO})


@register_policy("schedulefree_adamw")
def schedulefree_adamw(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """Schedule-Free AdamW (Defazio et al. 2024), lr = ``config.lr``, warm-up over 5 % of the steps.

    Trains at y and evaluates at x (``optimizer.train()``/``eval()``), as Schedule-Free SGD.
    """
    from schedulefree import AdamWScheduleFree
    _plain_sgd_only(config, "schedulefree_adamw")
    total = _total_steps(config, ctx)
    opt = AdamWScheduleFree(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            warmup_steps=math.ceil(0.05 * total))
    opt.train()
    return _ScheduleFreePolicy(opt, on_train=opt.train, on_eval=schedule_free_eval(opt, model, ctx),
                               info={"warmup_steps": opt.param_groups[0]["warmup_steps"]})
