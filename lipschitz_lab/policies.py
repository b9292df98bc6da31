"""Learning-rate policies: how a run's optimizer and rate are built.

A policy is a function ``build(config, model, ctx) -> Policy``.  The trainer
calls the hooks of the returned :class:`Policy` at fixed points of its loop;
the registry lets studies add baselines (``register_policy``) without
touching the trainer.  ``ctx`` is a :class:`PolicyContext` (the training
loader, steps per epoch, number of classes, device).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from lipschitz_lab.config import ConfigError, TrainConfig


@dataclass
class PolicyContext:
    train_loader: Any
    steps_per_epoch: int
    num_classes: int | None
    device: torch.device
    criterion: Callable


@dataclass
class Policy:
    optimizer: torch.optim.Optimizer
    scheduler: Any = None                 # a LipschitzLR, a torch LRScheduler, or None
    per_step: bool = True                 # torch schedulers: step each batch (else each epoch)
    lipschitz: bool = False               # the scheduler emits its own step records
    wrap_loss: Callable | None = None     # criterion wrapper (LipschitzLR observes targets)
    on_train: Callable[[], None] | None = None   # e.g. schedule-free's optimizer.train()
    on_eval: Callable[[], None] | None = None    # e.g. schedule-free's optimizer.eval()
    extra_steps: int = 0                  # iterations spent before training (LR range test)
    info: dict[str, Any] = field(default_factory=dict)

    def current_lr(self) -> float:
        g = self.optimizer.param_groups[0]
        lr = g["lr"]
        lr = float(lr) if not isinstance(lr, torch.Tensor) else lr.item()
        # D-Adaptation and Prodigy scale lr by their estimate d
        return lr * float(g.get("d", 1.0)) if "d" in g else lr


POLICIES: dict[str, Callable[[TrainConfig, nn.Module, PolicyContext], Policy]] = {}


def register_policy(name: str):
    def deco(fn):
        POLICIES[name] = fn
        return fn
    return deco


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"optimizer={name!r}: must be one of sgd, momentum, rmsprop, adam")



def _lipschitz_scheduler(config: TrainConfig, model: nn.Module, optimizer, ctx: PolicyContext):
    from lipschitz_lab.scheduler import LipschitzLR

    class FixedAfter(LipschitzLR):
        """Stops recomputing after ``fixed_after`` epochs (the paper's fixed run)."""

        def epoch_end(self):
            out = super().epoch_end()
            if config.fixed_after is not None and self.epoch >= config.fixed_after:
                self.recompute = "fixed"        # neither "epoch" nor "step": the rate stays
            return out

    cls = FixedAfter if config.fixed_after is not None else LipschitzLR
    return cls(optimizer, model, config.loss, num_classes=ctx.num_classes, bound=config.bound,
               kz=config.kz, recompute=config.recompute, min_lr=config.min_lr, max_lr=config.max_lr,
               eps=config.eps if config.loss == "label_smoothed_ce" else None,
               exact_protocol=config.exact_protocol,
               loader=ctx.train_loader if config.exact_protocol else None,
               variant_optimizer=config.optimizer)


@register_policy("lipschitz")
def lipschitz(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """lr = lr_scale / L, recomputed per epoch or step (:class:`~lipschitz_lab.scheduler.LipschitzLR`)."""
    optimizer = make_optimizer(config.optimizer, model.parameters(), lr=config.lr,
                               weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["lr_scale"] = config.lr_scale
    sched = _lipschitz_scheduler(config, model, optimizer, ctx)
    return Policy(optimizer, sched, per_step=True, lipschitz=True, wrap_loss=sched.wrap_loss,
                  info={"lr_scale": config.lr_scale})


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


def build_policy(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    if config.lr_policy not in POLICIES:
        _load_plugins()
    if config.lr_policy not in POLICIES:
        raise ConfigError(f"lr_policy={config.lr_policy!r}: unknown; choose one of {', '.join(POLICIES)}")
    return POLICIES[config.lr_policy](config, model, ctx)


def _load_plugins() -> None:
    """Baselines that live with the studies register themselves on import."""
    try:
        import lipschitz_lab.studies.baselines  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name not in ("lipschitz_lab.studies", "lipschitz_lab.studies.baselines"):
            raise
