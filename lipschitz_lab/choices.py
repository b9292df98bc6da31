"""The menus of a run: every choice field of :class:`~lipschitz_lab.config.TrainConfig` and its
allowed values, read live from the module that defines each list (a registered loss, data set,
model or policy shows up here).  The CLI's help and the panels' dropdowns read this; nothing
re-types a list."""
from __future__ import annotations

from lipschitz_lab.bounds import KZ_DEFINITIONS
from lipschitz_lab.config import DEVICES
from lipschitz_lab.optim_variants import OPTIMIZERS

__all__ = ["choices"]


def choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of every choice field of :class:`TrainConfig`, read live from the
    modules that define them (a registered loss, data set, model or policy shows up here)."""
    from lipschitz_lab.data import DATASETS
    from lipschitz_lab.losses import loss_names
    from lipschitz_lab.models import MODELS
    from lipschitz_lab.policies import POLICIES
    from lipschitz_lab.scheduler import BOUNDS, RECOMPUTE
    return {"dataset": tuple(DATASETS), "model": tuple(MODELS), "loss": loss_names(),
            "lr_policy": tuple(POLICIES), "optimizer": OPTIMIZERS, "bound": BOUNDS,
            "kz": KZ_DEFINITIONS, "recompute": RECOMPUTE, "device": DEVICES}
