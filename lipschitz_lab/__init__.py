"""lipschitz-lab: Lipschitz learning rates (Yedida & Saha, 2019), derived, checked and trained.

Public names are imported lazily so that ``import lipschitz_lab`` stays fast
(no torch, no SymPy until they are needed).
"""
from __future__ import annotations

from lipschitz_lab._lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "LipschitzLR": "lipschitz_lab.scheduler",
    "Probe": "lipschitz_lab.probe",
    "lipschitz_bound": "lipschitz_lab.bounds",
    "learning_rate": "lipschitz_lab.bounds",
    "derive": "lipschitz_lab.symbolic",
    "train": "lipschitz_lab.trainer",
    "TrainConfig": "lipschitz_lab.config",
    "RunStore": "lipschitz_lab.runs",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
