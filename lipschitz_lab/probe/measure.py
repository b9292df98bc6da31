"""The authors' extra pass: K_z measured in eval mode over a fixed loader, once per epoch."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from lipschitz_lab import distributed
from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.probe.accumulate import StepSums
from lipschitz_lab.probe.stats import nonfinite

__all__ = ["measure"]


def _batch_rows(probe, loader, device) -> tuple[list[torch.Tensor], list[torch.Tensor], bool]:
    """One (sums, maxima) row per batch: [‖A‖², ‖a‖², ‖y‖², m] and [max|A|]."""
    rows_sum, rows_max, saw_y = [], [], False
    sums = probe.sums
    for batch in loader:
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        sums.clear()
        if y is not None and torch.is_floating_point(y):
            probe.observe_targets(y)
            saw_y = True
        probe.model(x.to(device))
        if sums.empty:
            raise RuntimeError(f"the forward never reached layer {probe.layer_name!r}")
        z = torch.zeros((), dtype=torch.float64, device=sums.frob_sq.device)
        rows_sum.append(torch.stack([t.double() if t is not None else z for t in (
            sums.frob_sq, sums.K_a_sq, sums.y_sq)] + [z + sums.rows]))
        rows_max.append(sums.max_abs.double().reshape(1))
    return rows_sum, rows_max, saw_y


def measure(probe, loader: Iterable, *, device: torch.device | str | None = None,
            label: str = "measurement") -> dict[str, Any]:
    """One pass over ``loader`` in eval mode under ``torch.no_grad()``; the maxima over
    batches of K_z (both definitions), K_a and ||y|| (batches ``(x, y)`` or ``x``), and m,
    the largest batch.  Give a loader in fixed order without augmentation.  Syncs once."""
    if device is None:
        first = next(probe.model.parameters(), None)
        device = first.device if first is not None else "cpu"
    saved, probe.sums = probe.sums, StepSums()      # a training step in progress stays as it was
    was_training = probe.model.training
    probe.measuring = True
    probe.model.eval()
    try:
        with torch.no_grad():
            rows_sum, rows_max, saw_y = _batch_rows(probe, loader, device)
    finally:
        probe.measuring = False
        probe.model.train(was_training)
        probe.sums = saved
    if not rows_sum:
        raise ValueError("loader is empty")
    S, M = torch.stack(rows_sum), torch.stack(rows_max)
    if probe.sync_distributed and distributed.is_distributed():
        distributed.check_same_length(len(rows_sum))
        distributed.all_reduce_sum_max(S, M)   # per batch: the union over ranks
    frob_sq, K_a_sq, y_sq, m = S.max(dim=0).values.tolist()
    max_abs = M.max().item()
    bad = nonfinite(f"{label} (eval mode)", probe.layer_name,
                    {"frob_sq": frob_sq, "max_abs": max_abs, "K_a_sq": K_a_sq, "y_sq": y_sq}, [])
    if bad:
        raise DivergenceError(bad)
    return {"m": int(round(m)), "K_z_frobenius": math.sqrt(frob_sq), "K_z_max_abs": max_abs,
            "K_a": math.sqrt(K_a_sq), "y_norm": math.sqrt(y_sq) if saw_y else None,
            "batches": len(rows_sum)}
