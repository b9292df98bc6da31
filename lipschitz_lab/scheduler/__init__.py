"""LipschitzLR (:mod:`.lipschitz_lr`): its states and transitions (:mod:`.state`), the math of
the rate (:mod:`.rule`), the rate on the device (:mod:`.rate`), the record decoded at a flush
(:mod:`.record`), the argument checks (:mod:`.checks`), its option groups and choice lists
(:mod:`.options`), checkpoints (:mod:`.saved`) and the layer-wise rule (:mod:`.layerwise`)."""
from __future__ import annotations

from lipschitz_lab.scheduler.lipschitz_lr import LipschitzLR
from lipschitz_lab.scheduler.options import BOUNDS, RECOMPUTE, CurvatureOptions, EMAOptions, SmoothOptions

__all__ = ["BOUNDS", "RECOMPUTE", "CurvatureOptions", "EMAOptions", "LipschitzLR", "SmoothOptions"]
