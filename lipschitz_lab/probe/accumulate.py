r"""What the probe's hooks add up between two reads: the union batch of one step.

Several training forwards before one read (gradient accumulation) are measured as
their union batch: squared norms and counts add up, maxima take the max.  Each number
is a 0-d device tensor (or None: nothing seen yet), so a forward never waits for the
device.
"""
from __future__ import annotations

import math

import torch

__all__ = ["StepSums", "count_targets", "rows_of"]


def _add(old, new):   # a running sum that starts at the first term
    return new if old is None else old + new


def rows_of(a: torch.Tensor) -> int:
    """The rows of an activation: every position of (B, T, d) is a row, as for the loss."""
    return a.numel() // a.shape[-1] if a.dim() > 1 and a.shape[-1] else (a.shape[0] if a.dim() else 1)


def count_targets(y: torch.Tensor) -> torch.Tensor | None:
    """The class targets the loss averages (negative ones, torch's ``ignore_index`` -100 or a -1
    pad, are ignored), as a float64 0-d device tensor; None for float targets (their rows count)."""
    if y.is_floating_point() or y.is_complex():
        return None
    return (y.detach() >= 0).sum().double()


class StepSums:
    """The step being measured: 0-d tensors and the rows, reset at each read."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.frob_sq = self.max_abs = self.K_a_sq = self.y_sq = self.sigma_sq = self.counted = None
        self.rows = 0

    @property
    def empty(self) -> bool:
        return self.frob_sq is None

    def add_activations(self, a: torch.Tensor) -> None:
        """‖A‖_F², max|A| and the rows of the last layer's input (float32 or wider accumulation)."""
        acc = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else None
        frob = torch.linalg.vector_norm(a, dtype=acc).double()   # K_z^2 would overflow float32 at 1.8e19
        self.frob_sq = _add(self.frob_sq, frob * frob)
        max_abs = torch.linalg.vector_norm(a, ord=math.inf, dtype=acc)
        self.max_abs = max_abs if self.max_abs is None else torch.maximum(self.max_abs, max_abs)
        self.rows += rows_of(a) if a.dim() > 0 else 1

    def add_output(self, out: torch.Tensor) -> None:
        acc = torch.float32 if out.dtype in (torch.float16, torch.bfloat16) else None
        K_a = torch.linalg.vector_norm(out.detach(), dtype=acc).double()
        self.K_a_sq = _add(self.K_a_sq, K_a * K_a)

    def add_sigma(self, sigma_sq: torch.Tensor) -> None:
        self.sigma_sq = _add(self.sigma_sq, sigma_sq)     # union: λ_max(ΣBᵢᵀBᵢ) ≤ Σλᵢ

    def add_targets(self, y: torch.Tensor) -> None:
        n = torch.linalg.vector_norm(y.detach().float()).double()
        self.y_sq = _add(self.y_sq, n * n)
        counted = count_targets(y)
        if counted is not None:
            self.counted = _add(self.counted, counted)
