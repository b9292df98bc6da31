"""The curvature instruments LipschitzLR carries when asked (``sharpness_every=N``): one
:class:`~lipschitz_lab.probe.monitor.CurvatureMonitor` on the model, measured from LipschitzLR's own
optimizer pre-hook (so a curvature rule reads λ_max before it sets the rate of the same update)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lipschitz_lab.probe.monitor import CurvatureMonitor
from lipschitz_lab.scheduler.options import CURVATURE_BOUNDS, CurvatureOptions

__all__ = ["check_sharpness", "curvature_monitor", "DEFAULT_EVERY"]

#: a curvature rule with no sharpness_every measures every this many steps
DEFAULT_EVERY = 10


def check_sharpness(every: int | None, bound: str) -> int | None:
    """``sharpness_every`` as given, or the default a curvature rule needs; bad values name the field."""
    if every is None:
        return DEFAULT_EVERY if bound in CURVATURE_BOUNDS else None
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"sharpness_every must be an integer >= 1 or None; got sharpness_every={every!r}")
    return every


def curvature_monitor(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable, every: int,
                      options: CurvatureOptions) -> CurvatureMonitor:
    """The monitor on ``model`` with the user's ``criterion`` (the batch loss it differentiates)."""
    return CurvatureMonitor(model, optimizer, criterion, every=every, iters=options.iters, rows=options.rows,
                            optimizer_hook=False)
