r"""The numbers one step measures: their layout on the device, and their decoding on the host.

One float64 vector per step holds, in this order,

====================  =========================================================
``frob_sq``           :math:`\|A\|_F^2` of the penultimate activations A
``K_a_sq``            :math:`\|a^{[L]}\|_2^2` of the last layer's output
``y_sq``              :math:`\|y\|_2^2` of the targets (mse)
``m``                 the rows of A (the union batch under torch.distributed)
``sigma_sq``          :math:`\sigma_{\max}([A, 1])^2`, when measured (see :mod:`.spectral`)
``max_abs``           :math:`\max_{ij}|A_{ij}|`
``w_max``             :math:`\max_\ell \|w_\ell\|` over parameter tensors
gradient maxima       :math:`\max|\partial E/\partial w|`, one per parameter tensor
====================  =========================================================

The first five add up over micro-batches and ranks (squared norms and m); the
rest take the max.  So one SUM and one MAX all-reduce give every rank the union
batch's statistics (:mod:`lipschitz_lab.distributed`).  The first six are the
ones the paper's per-epoch rate keeps running maxima of (``EPOCH_SPAN``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

#: the leading entries of a step's vector (then one gradient maximum per parameter tensor)
LAYOUT = ("frob_sq", "K_a_sq", "y_sq", "m", "sigma_sq", "max_abs", "w_max")
N_SUMS = 5          # LAYOUT[:5] add up across micro-batches and ranks, the rest take the max
EPOCH_SPAN = 6      # LAYOUT[:6]: the statistics whose running maximum an epoch keeps
#: the statistics an epoch's running maxima report, by name (Probe.epoch_max, the rate per epoch)
EPOCH_STATS = ("K_z_frobenius", "K_z_max_abs", "m", "K_a", "y_norm")


@dataclass
class StepStats:
    """One step's statistics, still on the device (reading them costs nothing)."""

    values: torch.Tensor              # float64, LAYOUT then the gradient maxima
    grad_index: list[int]             # which parameter each gradient maximum belongs to
    m: int                            # this process's rows (values[3] is the union over ranks)
    has_K_a: bool
    has_y: bool
    has_sigma: bool
    scale: torch.Tensor | None = None  # <g, o>, <o, o>, <g, g> of the loss-scale check, or None

    def K_z(self, kz: str) -> torch.Tensor:
        """K_z in the given definition, as a 0-d device tensor."""
        return self.values[0].sqrt() if kz == "frobenius" else self.values[5]

    def get(self, name: str) -> torch.Tensor:
        i = LAYOUT.index(name)
        return self.values[i]


def _bad(value: float) -> str | None:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def nonfinite(label: str, layer: str, named: dict[str, float], grads: list[tuple[str, float]]) -> str | None:
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


def decode(stats: StepStats, values: list[float], *, label: str, layer: str, params: list[str],
           owners: list[str], is_last: list[bool]) -> dict[str, Any]:
    """The step's statistics as plain numbers (the record's fields), with ``nonfinite``."""
    named = dict(zip(LAYOUT, values))
    if not stats.has_K_a:
        named["K_a_sq"] = 0.0
    if not stats.has_y:
        named["y_sq"] = 0.0
    g_vals = values[len(LAYOUT):len(LAYOUT) + len(stats.grad_index)]
    grads = [(params[i], v) for i, v in zip(stats.grad_index, g_vals)]
    bad = nonfinite(label, layer, named, grads)
    grad_layers: dict[str, float] = {}
    grad_last = None
    for i, v in zip(stats.grad_index, g_vals):
        grad_layers[owners[i]] = max(grad_layers.get(owners[i], 0.0), v)
        if is_last[i]:
            grad_last = v if grad_last is None else max(grad_last, v)
    out = {
        "m": int(round(named["m"])),
        "K_z_frobenius": math.sqrt(named["frob_sq"]),      # sqrt keeps nan and inf as they are
        "K_z_max_abs": named["max_abs"],
        "K_a": math.sqrt(named["K_a_sq"]) if stats.has_K_a else None,
        "y_norm": math.sqrt(named["y_sq"]) if stats.has_y else None,
        "sigma_max": math.sqrt(named["sigma_sq"]) if stats.has_sigma else None,
        "w_max": named["w_max"],
        "grad_last": grad_last,
        "grad_layers": grad_layers,
        "nonfinite": bad,
    }
    if stats.scale is not None:
        ro, oo, rr = values[-3:]
        out["loss_scale_check"] = {"ro": ro, "oo": oo, "rr": rr, "m": stats.m}
    return out


def epoch_dict(values: list[float], has_K_a: bool, has_y: bool) -> dict[str, float]:
    """An epoch's running maxima (``values`` = LAYOUT[:EPOCH_SPAN]) by name, as the paper's rate reads them."""
    frob_sq, K_a_sq, y_sq, m, _sigma_sq, max_abs = values
    out = {"K_z_frobenius": math.sqrt(frob_sq), "K_z_max_abs": max_abs, "m": int(round(m))}
    if has_K_a:
        out["K_a"] = math.sqrt(K_a_sq)
    if has_y:
        out["y_norm"] = math.sqrt(y_sq)
    return out
