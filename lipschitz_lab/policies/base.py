"""What every policy shares: :class:`Policy`, :class:`PolicyContext`, the registry and
the optimizers.  The policies themselves live in the sibling modules."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.optim_variants import OPTIMIZERS


@dataclass
class PolicyContext:
    train_loader: Any
    steps_per_epoch: int
    num_classes: int | None
    device: torch.device
    criterion: Callable
    log: Any = None                       # the run's StepLog (LipschitzLR queues its records there)


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
    state: Callable[[], dict] | None = None              # what a checkpoint must keep beyond the optimizer
    load_state: Callable[[dict], None] | None = None     # ... and how a resume puts it back

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
    """The optimizer by name.  On CUDA SGD and Adam are the fused kernels: they read a rate
    held on the device, so LipschitzLR sets it without a host sync."""
    params = list(params)
    first = next((p for item in params for p in (item["params"] if isinstance(item, dict) else [item])), None)
    fused = {"fused": True} if first is not None and first.is_cuda else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, **fused)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    raise ConfigError(f"optimizer={name!r}: must be one of {', '.join(OPTIMIZERS)}")
