"""Records as a pandas table: one row per record, nested dicts spread into columns."""
from __future__ import annotations

from typing import Any, Iterable


def flatten(record: dict, prefix: str = "") -> dict[str, Any]:
    """``{"grad_layers": {"fc": 0.1}}`` -> ``{"grad_layers.fc": 0.1}``, recursively."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def records_frame(records: Iterable[dict]):
    """A ``pandas.DataFrame`` with columns in the order they first appear.

    A field a record lacks is NaN in its row; so is a ``None`` in a numeric column
    (pandas' own rule).
    """
    import pandas as pd  # imported here so that the store itself needs no pandas

    return pd.DataFrame([flatten(r) for r in records])
