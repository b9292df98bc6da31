"""Records become plot columns here and nowhere else.

A field a record lacks, or holds as ``None`` (baseline policies have no K_z, L or
gradient maxima; runs older than the smoothness bound have no ``beta``), is NaN
in its column, which Bokeh draws as a gap: a missing key draws nothing.  Every
number comes from the records; no formula is typed here.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

Record = dict[str, Any]

#: step-record fields the figures use, in column order; ``gap`` is grad_last / L.
#: ``beta`` (β = S₂·σ_max([A,1])²), ``sigma_max`` and ``lr_smooth`` (c/β) come with the smoothness bound.
#: ``inv_L`` is 1/L (the stability figure draws it beside lr and 1/λ_max).
STEP_COLUMNS = ("step", "epoch", "lr", "K_z", "L", "L_paper", "L_corrected", "grad_last",
                "gap", "gap_paper", "gap_corrected", "loss", "acc", "beta", "sigma_max", "lr_smooth", "inv_L")
#: the measured steps of a run with ``sharpness_every`` (one row each): λ_max, edge = lr·λ_max with the
#: rate the update used, 1/λ_max, and the rate itself
CURVATURE_COLUMNS = ("step", "lambda_max", "edge", "inv_lambda", "lr")
EPOCH_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                 "test_loss", "test_acc")

#: why a step's L cannot sit on a log axis, by the record's ``clamped`` (scheduler / bounds.learning_rate)
#: (K_z = 0 sets the *next* rate to max_lr: per step at once, per epoch only at the epoch's end)
MARK_REASONS = {"K_z=0": "K_z = 0: L = 0, the next rate set is max_lr",
                "L<0": "L < 0: no rate, clamped"}


def number(value: Any) -> float:
    """A record value as a float; None and non-numbers become NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_step(r: Record) -> bool:
    return r.get("kind", "step") == "step"


def _ratios(num: list[float], den: list[float]) -> list[float]:
    """num / den, NaN where den is 0 or NaN (a bound of 0 gives no finite gap)."""
    return [n / d if d else math.nan for n, d in zip(num, den)]


def step_columns(records: Iterable[Record]) -> dict[str, list[float]]:
    """Columns of :data:`STEP_COLUMNS` from step records (other kinds are skipped)."""
    rows = [r for r in records if _is_step(r)]
    cols = {c: [number(r.get(c)) for r in rows] for c in STEP_COLUMNS if not c.startswith(("gap", "inv_"))}
    cols["inv_L"] = _ratios([1.0] * len(rows), cols["L"])
    cols["gap"] = _ratios(cols["grad_last"], cols["L"])
    cols["gap_paper"] = _ratios(cols["grad_last"], cols["L_paper"])
    cols["gap_corrected"] = _ratios(cols["grad_last"], cols["L_corrected"])
    return {c: cols[c] for c in STEP_COLUMNS}


def epoch_columns(records: Iterable[Record]) -> dict[str, list[float]]:
    """Columns of :data:`EPOCH_COLUMNS` from epoch records; x is ``epoch + 1`` (epochs done)."""
    cols: dict[str, list[float]] = {c: [] for c in EPOCH_COLUMNS}
    for r in records:
        if r.get("kind") != "epoch":
            continue
        for c in EPOCH_COLUMNS:
            cols[c].append(number(r.get(c)))
    cols["epochs_done"] = [e + 1 for e in cols["epoch"]]
    return cols


def mark_columns(records: Iterable[Record]) -> dict[str, list]:
    """``step`` and ``why`` of the steps whose L is 0 or negative: the steps that vanish
    from a log axis (no L, no finite gap) and whose rate was clamped instead of 1/L."""
    cols: dict[str, list] = {"step": [], "why": []}
    for r in records:
        if not _is_step(r):
            continue
        why = MARK_REASONS.get(r.get("clamped"))
        L = number(r.get("L"))
        if why is None and L <= 0:
            why = MARK_REASONS["K_z=0" if L == 0 else "L<0"]
        if why is not None:
            cols["step"].append(number(r.get("step")))
            cols["why"].append(why)
    return cols


def layer_names(records: Iterable[Record]) -> list[str]:
    """The layers of the first step record that has ``grad_layers``, in model order."""
    for r in records:
        layers = r.get("grad_layers") if _is_step(r) else None
        if layers:
            return list(layers)
    return []


def layer_columns(records: Iterable[Record], names: list[str]) -> dict[str, list[float]]:
    """``step`` and one column ``g<i>`` per layer name (max |grad| of that layer)."""
    cols: dict[str, list[float]] = {"step": [], **{f"g{i}": [] for i in range(len(names))}}
    for r in records:
        if not _is_step(r):
            continue
        layers = r.get("grad_layers") or {}
        cols["step"].append(number(r.get("step")))
        for i, name in enumerate(names):
            cols[f"g{i}"].append(number(layers.get(name)))
    return cols


def arrays(cols: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """float64 arrays: Bokeh sends them as one binary buffer each, where a list of
    floats is encoded number by number (the bulk of a batch's cost on the kernel's loop)."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def has_lipschitz_fields(records: Iterable[Record]) -> bool:
    """True when some step record carries a K_z (a Lipschitz policy's run)."""
    return any(_is_step(r) and r.get("K_z") is not None for r in records)


def has_smoothness_fields(records: Iterable[Record]) -> bool:
    """True when some step record carries β or lr_smooth (runs since the smoothness bound)."""
    return any(_is_step(r) and (r.get("beta") is not None or r.get("lr_smooth") is not None)
               for r in records)


def has_curvature_fields(records: Iterable[Record]) -> bool:
    """True when some step record carries the curvature instruments (``sharpness_every``: every step
    has ``edge_limit``, the measured ones ``lambda_max``)."""
    return any(_is_step(r) and (r.get("edge_limit") is not None or r.get("lambda_max") is not None)
               for r in records)


def curvature_columns(records: Iterable[Record]) -> dict[str, list[float]]:
    """Columns of :data:`CURVATURE_COLUMNS`, one row per measured step (one with a ``lambda_max``)."""
    rows = [r for r in records if _is_step(r) and r.get("lambda_max") is not None]
    cols = {c: [number(r.get(c)) for r in rows] for c in CURVATURE_COLUMNS if c != "inv_lambda"}
    cols["inv_lambda"] = _ratios([1.0] * len(rows), cols["lambda_max"])
    return {c: cols[c] for c in CURVATURE_COLUMNS}


def edge_limit(records: Iterable[Record]) -> float | None:
    """The run's ``edge_limit`` (2 for gradient descent, 2(1+μ) with heavy ball), from its first step
    record that has one; None without the instruments."""
    for r in records:
        if _is_step(r) and r.get("edge_limit") is not None:
            return number(r["edge_limit"])
    return None
