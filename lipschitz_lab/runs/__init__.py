"""The run store: configs, records and artifacts in one SQLite file, and checkpoints.

``RunStore`` and ``StoreWriter`` need neither torch nor pandas to import; the
checkpoint helpers (which need torch) and the leases (:mod:`~lipschitz_lab.runs.leases`:
who trains a run) are imported on first use.
"""
from __future__ import annotations

from lipschitz_lab._lazy import lazy_exports

from lipschitz_lab.runs.schema import SCHEMA_VERSION
from lipschitz_lab.runs.store import DEFAULT_DB, STATUSES, STORE_ENV, RunStore, open_store, store_path
from lipschitz_lab.runs.writer import StoreWriter

_LAZY = {
    **{name: "lipschitz_lab.runs.checkpoint"
       for name in ("save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "write_atomic")},
    **{name: "lipschitz_lab.runs.leases" for name in ("LeasedStore", "LeaseLost", "Lease", "LEASE_TTL_S")},
}

__all__ = ["DEFAULT_DB", "SCHEMA_VERSION", "STATUSES", "STORE_ENV", "RunStore", "StoreWriter", "open_store",
           "store_path", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
