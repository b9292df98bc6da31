"""The probe: K_z, K_a, ||y||, σ_max and the gradient maxima, measured by hooks during the
normal training step (:mod:`.hooks`), laid out in one device vector per step (:mod:`.stats`),
plus the authors' extra eval pass (:mod:`.measure`) and the loss-scale check (:mod:`.scale`)."""
from __future__ import annotations

from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.probe.hooks import Probe, find_last_linear
from lipschitz_lab.probe.stats import EPOCH_STATS, LAYOUT, StepStats

__all__ = ["DivergenceError", "EPOCH_STATS", "LAYOUT", "Probe", "StepStats", "find_last_linear"]
