"""The run store: configs, records and artifacts in one SQLite file, and checkpoints.

``RunStore`` and ``StoreWriter`` need neither torch nor pandas to import; the
checkpoint helpers (which need torch) are imported on first use.
"""
from __future__ import annotations

import importlib

from lipschitz_lab.runs.schema import SCHEMA_VERSION
from lipschitz_lab.runs.store import DEFAULT_DB, STATUSES, RunStore
from lipschitz_lab.runs.writer import StoreWriter

_LAZY = {name: "lipschitz_lab.runs.checkpoint"
         for name in ("save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state")}

__all__ = ["DEFAULT_DB", "SCHEMA_VERSION", "STATUSES", "RunStore", "StoreWriter", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lipschitz_lab.runs' has no attribute {name!r}")


def __dir__():
    return __all__
