"""LipschitzLR (:mod:`.lipschitz_lr`): its states and transitions (:mod:`.transitions`), the rate
on the device (:mod:`.rate`), the record decoded at a flush (:mod:`.record`), the argument checks
(:mod:`.checks`) and its option groups and choice lists (:mod:`.options`)."""
from __future__ import annotations

from lipschitz_lab.scheduler.lipschitz_lr import LipschitzLR
from lipschitz_lab.scheduler.options import BOUNDS, RECOMPUTE, EMAOptions, SmoothOptions

__all__ = ["BOUNDS", "RECOMPUTE", "EMAOptions", "LipschitzLR", "SmoothOptions"]
