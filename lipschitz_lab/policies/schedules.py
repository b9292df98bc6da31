"""Baselines with a hand-set rate: constant, step decay, cosine, one-cycle (torch's schedulers)."""
from __future__ import annotations

import torch
from torch import nn

from lipschitz_lab.config import TrainConfig
from lipschitz_lab.policies.base import Policy, PolicyContext, make_optimizer, register_policy


@register_policy("constant")
def constant(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """A constant rate ``config.lr``."""
    return Policy(make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay))


@register_policy("step")
def step_decay(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """``config.lr``, divided by 10 at 1/2 and 3/4 of training (per epoch)."""
    opt = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    milestones = sorted({max(1, config.epochs // 2), max(1, (3 * config.epochs) // 4)})
    return Policy(opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1), per_step=False)


@register_policy("cosine")
def cosine(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """Cosine annealing from ``config.lr`` to 0 over all steps."""
    opt = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    total = config.epochs * ctx.steps_per_epoch
    return Policy(opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total)))


@register_policy("onecycle")
def onecycle(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """One-cycle with peak ``config.lr`` (torch's OneCycleLR)."""
    opt = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    total = config.epochs * ctx.steps_per_epoch
    return Policy(opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(2, total)))
