r"""The numbers one step measures: their names, their layout on the device, and their decoding.

One float64 vector per step (:class:`~lipschitz_lab.probe.layout.StatLayout`) holds

====================  ======  =========================================================
``frob_sq``           sum     :math:`\|A\|_F^2` of the penultimate activations A (all rows)
``K_a_sq``            sum     :math:`\|a^{[L]}\|_2^2` of the last layer's output
``y_sq``              sum     :math:`\|y\|_2^2` of the targets (mse)
``rows``              sum     the rows of A: the batch, or batch × positions for (B, T, d)
``counted``           sum     the targets the loss averages: class targets that are not ignored
``sigma_sq``          sum     :math:`\sigma_{\max}([A, 1])^2`, when measured (see :mod:`.spectral`)
``max_abs``           max     :math:`\max_{ij}|A_{ij}|`
``w_max``             max     :math:`\max_\ell \|w_\ell\|` over parameter tensors
``grad``              max     :math:`\max|\partial E/\partial w|`, one per parameter tensor (-1: no gradient)
``own_grad``          max     the last layer's own :math:`\max|\delta^\top A|` when its weight is tied
``check``             local   the loss-scale check's dot products (:mod:`.scale`), on every step
====================  ======  =========================================================

The sums add up over micro-batches and ranks, the maxima take the max; so one SUM
and one MAX all-reduce give every rank the union batch's statistics.  ``check`` stays
each rank's own.  An epoch keeps running maxima of :data:`EPOCH_FIELDS`.

m, the number of terms the loss averages, is ``counted`` when class targets reached the
probe (``observe``, ``wrap_loss``), else ``rows``.  With padding (``ignore_index``) it is
the tokens that count; K_z still runs over every row (docs/recipes.md says why that bounds).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lipschitz_lab import _ops
from lipschitz_lab.probe.layout import Field, StatLayout

__all__ = ["EPOCH_FIELDS", "StepStats", "probe_layout", "bound_inputs", "decode", "nonfinite"]

#: the statistics whose running maximum an epoch keeps (the paper's per-epoch rate reads them)
EPOCH_FIELDS = ("frob_sq", "K_a_sq", "y_sq", "rows", "counted", "sigma_sq", "max_abs")
#: a gradient maximum that says "this parameter has no gradient this step"
NO_GRAD = -1.0


def probe_layout(n_params: int, *, check_size: int = 0, own_grad: bool = False) -> StatLayout:
    """The layout of a probe's step vector: ``n_params`` gradient maxima, the check's numbers."""
    fields = [Field("frob_sq", "sum"), Field("K_a_sq", "sum"), Field("y_sq", "sum"), Field("rows", "sum"),
              Field("counted", "sum"), Field("sigma_sq", "sum"), Field("max_abs", "max"),
              Field("w_max", "max"), Field("grad", "max", n_params)]
    if own_grad:
        fields.append(Field("own_grad", "max"))
    if check_size:
        fields.append(Field("check", "local", check_size))
    return StatLayout(fields)


@dataclass
class StepStats:
    """One step's statistics, still on the device (reading them costs nothing)."""

    values: torch.Tensor              # float64, laid out by ``layout``
    layout: StatLayout
    grad_index: list[int]             # the parameters that had a gradient this step
    rows: int                         # this process's rows (``values``' rows are the union over ranks)
    has_K_a: bool
    has_y: bool
    has_sigma: bool
    has_counted: bool = False         # class targets reached the probe: m = counted
    has_check: bool = False           # a loss-scale check step: ``check`` holds its numbers

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.layout.get(self.values, name)

    def flags(self) -> dict[str, bool]:
        return {"has_K_a": self.has_K_a, "has_y": self.has_y, "has_sigma": self.has_sigma,
                "has_counted": self.has_counted}

    def bound_inputs(self, kz: str) -> dict[str, Any]:
        """The 0-d device tensors the bounds take: m, K_z, K_a, ‖y‖, σ_max."""
        named = {n: self[n] for n in EPOCH_FIELDS}
        return bound_inputs(named, kz=kz, **self.flags())


def bound_inputs(named: Mapping[str, Any], *, kz: str | None, has_K_a: bool, has_y: bool, has_sigma: bool,
                 has_counted: bool) -> dict[str, Any]:
    """Statistics by name (device tensors or floats) as the bounds take them.

    ``kz=None`` gives both K_z definitions (``K_z_frobenius``, ``K_z_max_abs``)."""
    def root(x):
        return _ops.sqrt(x)
    out: dict[str, Any] = {"m": named["counted"] if has_counted else named["rows"]}
    for name in ("frobenius", "max_abs") if kz is None else (kz,):
        out[f"K_z_{name}"] = root(named["frob_sq"]) if name == "frobenius" else named["max_abs"]
    out["K_a"] = root(named["K_a_sq"]) if has_K_a else None
    out["y_norm"] = root(named["y_sq"]) if has_y else None
    out["sigma_max"] = root(named["sigma_sq"]) if has_sigma else None
    return out


def _bad(value: float) -> str | None:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def nonfinite(label: str, layer: str, named: Mapping[str, float],
              grads: list[tuple[str, float]]) -> str | None:
    """The first NaN/inf quantity, in the order the step computes them, as a message."""
    for name, key, what in (("K_z", "frob_sq", f"activations of layer {layer!r}"),
                            ("K_z", "max_abs", f"activations of layer {layer!r}"),
                            ("K_a", "K_a_sq", f"output of layer {layer!r}"),
                            ("y_norm", "y_sq", "targets")):
        bad = _bad(named.get(key, 0.0))
        if bad:
            return f"{label}: {name} is {bad} ({what})"
    for p_name, value in grads:   # before w_max: an inf gradient is the cause of inf weights
        bad = _bad(value)
        if bad:
            return f"{label}: gradient of {p_name!r} is {bad}"
    bad = _bad(named.get("w_max", 0.0))
    return f"{label}: w_max is {bad} (weights)" if bad else None


def _grad_maxima(named, stats: StepStats, *, params, owners, is_last, last_name):
    """(grads for the NaN check, grad_layers, grad_last) from the per-parameter maxima."""
    grads = [(params[i], named["grad"][i]) for i in stats.grad_index]
    grad_layers: dict[str, float] = {}
    grad_last = None
    for i in stats.grad_index:
        v = named["grad"][i]
        grad_layers[owners[i]] = max(grad_layers.get(owners[i], 0.0), v)
        if is_last[i]:
            grad_last = v if grad_last is None else max(grad_last, v)
    if "own_grad" in named:             # a tied last layer: its own share, δᵀA, by its own name
        own = named["own_grad"]
        grad_layers[last_name] = max(grad_layers.get(last_name, 0.0), own)
        grad_last = own if grad_last is None else max(grad_last, own)
    return grads, grad_layers, grad_last


def decode(stats: StepStats, values: list[float], *, label: str, layer: str, params: list[str],
           owners: list[str], is_last: list[bool]) -> dict[str, Any]:
    """The step's statistics as plain numbers (the record's fields), with ``nonfinite``."""
    named = stats.layout.unpack(values)
    if not stats.has_K_a:
        named["K_a_sq"] = 0.0
    if not stats.has_y:
        named["y_sq"] = 0.0
    grads, grad_layers, grad_last = _grad_maxima(named, stats, params=params, owners=owners,
                                                 is_last=is_last, last_name=layer)
    plain = bound_inputs(named, kz=None, **stats.flags())
    out = {
        "m": int(round(plain["m"])),
        "rows": int(round(named["rows"])),
        "K_z_frobenius": plain["K_z_frobenius"],             # sqrt keeps nan and inf as they are
        "K_z_max_abs": plain["K_z_max_abs"],
        "K_a": plain["K_a"], "y_norm": plain["y_norm"], "sigma_max": plain["sigma_max"],
        "w_max": named["w_max"],
        "grad_last": grad_last,
        "grad_layers": grad_layers,
        "nonfinite": nonfinite(label, layer, named, grads),
    }
    if stats.has_check:
        out["check"] = {"values": named["check"], "rows": stats.rows}
    return out
