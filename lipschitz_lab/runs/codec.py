"""JSON text for configs and records, kept exact across the round trip.

Python's ``json`` already keeps what a record needs: floats stay floats
(``1.0`` is written ``1.0``), ints stay ints, ``None`` stays ``None``, key
order is kept, and with ``allow_nan=True`` (the default) NaN and +-inf are
written as ``NaN`` / ``Infinity`` and read back as floats.  SQLite never sees
the numbers, only the text, so nothing is lost to its type affinity.

What does not survive: tuples come back as lists, and non-string dict keys
come back as strings (JSON objects have string keys only).
"""
from __future__ import annotations

import json
import os
from typing import Any


def _default(value: Any) -> Any:
    # numpy scalars and 0-d arrays/tensors that slipped into a record: store the number
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Encode ``value`` as compact JSON text (NaN and inf allowed)."""
    return json.dumps(value, default=_default, allow_nan=True, sort_keys=sort_keys,
                      separators=(",", ":"))


def loads(text: str) -> Any:
    return json.loads(text)


def encode_config(config: dict) -> str:
    """A config as JSON with sorted keys, so equal configs give equal text."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    try:
        return dumps(config, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config is not JSON-serialisable: {exc}") from exc


def encode_record(record: dict) -> str:
    """A record as JSON, keeping its key order."""
    try:
        return dumps(record)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"record at step {record.get('step')!r} is not JSON-serialisable: {exc}") from exc
