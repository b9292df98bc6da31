"""The probe: K_z, K_a, ||y||, σ_max and the gradient maxima, measured by hooks during the
normal training step (:mod:`.hooks`), packed in one device vector per step whose slices are
named by one layout (:mod:`.layout`, :mod:`.stats`), the epoch's running maxima (:mod:`.epoch`),
the authors' extra eval pass (:mod:`.measure`) and the loss-scale check (:mod:`.scale`)."""
from __future__ import annotations

from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.probe.hooks import Probe, find_last_linear
from lipschitz_lab.probe.layout import Field, StatLayout
from lipschitz_lab.probe.stats import EPOCH_FIELDS, StepStats

__all__ = ["DivergenceError", "EPOCH_FIELDS", "Field", "Probe", "StatLayout", "StepStats", "find_last_linear"]
