"""Learning-rate policies: how a run's optimizer and rate are built.

A policy is a function ``build(config, model, ctx) -> Policy``.  The trainer
calls the hooks of the returned :class:`Policy` at fixed points of its loop
and never needs to know which policy it runs.  ``ctx`` is a
:class:`PolicyContext` (the training loader, steps per epoch, number of
classes, device, criterion).

- :mod:`~lipschitz_lab.policies.lipschitz`: LipschitzLR (lr = lr_scale / L);
- :mod:`~lipschitz_lab.policies.schedules`: constant, step, cosine, one-cycle;
- :mod:`~lipschitz_lab.policies.baselines`: LR range test, Prodigy, D-Adaptation,
  DoG, Schedule-Free SGD;
- :mod:`~lipschitz_lab.policies.agd`: AGD, automatic gradient descent (Bernstein et al. 2023);
- :mod:`~lipschitz_lab.policies.transformer`: nanoGPT's AdamW with warm-up and cosine,
  Schedule-Free AdamW.

All of them are registered when this package is imported, so ``POLICIES`` is
complete wherever it is read.  ``register_policy`` adds one of your own.
"""
from __future__ import annotations

from torch import nn

from lipschitz_lab.config import ConfigError, TrainConfig
# importing registers them, in the order menus list them
from lipschitz_lab.policies import lipschitz  # noqa: F401,I001
from lipschitz_lab.policies import schedules  # noqa: F401
from lipschitz_lab.policies import baselines  # noqa: F401
from lipschitz_lab.policies import agd  # noqa: F401
from lipschitz_lab.policies import transformer  # noqa: F401
from lipschitz_lab.policies.base import POLICIES, Policy, PolicyContext, make_optimizer, register_policy

__all__ = ["POLICIES", "Policy", "PolicyContext", "build_policy", "make_optimizer", "register_policy"]


def build_policy(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    if config.lr_policy not in POLICIES:
        raise ConfigError(f"lr_policy={config.lr_policy!r}: unknown; choose one of {', '.join(POLICIES)}")
    return POLICIES[config.lr_policy](config, model, ctx)
