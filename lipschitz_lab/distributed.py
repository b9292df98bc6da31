r"""All-reduce helpers: every rank sees the statistics of the union batch.

With R ranks each holding a batch :math:`A_r` of :math:`m_r` rows, the union
batch :math:`A = [A_1; \dots; A_R]` has

.. math::

    \|A\|_F = \sqrt{\textstyle\sum_r \|A_r\|_F^2}, \quad
    \max|A| = \max_r \max|A_r|, \quad
    m = \textstyle\sum_r m_r, \quad
    \|a\|_2 = \sqrt{\textstyle\sum_r \|a_r\|_2^2}, \quad
    \|y\|_2 = \sqrt{\textstyle\sum_r \|y_r\|_2^2}

so the probe packs squared norms and m into one SUM tensor and the maxima
(max |A|, gradient maxima, max ‖w‖) into one MAX tensor: two collectives per
step.  Gradients are already averaged by DDP, so their MAX is a no-op that
only guards against ranks drifting apart.  Then every rank computes the same L
and lr, equal to the single-process rate on the union batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "all_reduce_sum_max", "check_same_length", "min_over_ranks"]


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_max(sums: torch.Tensor | None, maxes: torch.Tensor | None) -> None:
    """In place: ``sums`` all-reduced with SUM, ``maxes`` with MAX (no-op on one rank)."""
    if not is_distributed():
        return
    if sums is not None:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    if maxes is not None:
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def min_over_ranks(value: float) -> float:
    """The smallest ``value`` of all ranks (one collective; a no-op on one rank)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t[0])


def check_same_length(n: int) -> None:
    """Raise if ranks measured different numbers of batches (per-batch union needs equal counts)."""
    if not is_distributed():
        return
    t = torch.tensor([n, -n], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    hi, lo = int(t[0]), -int(t[1])
    if hi != lo:
        raise ValueError(f"ranks measured different numbers of batches ({lo} to {hi}); "
                         "use a DistributedSampler so every rank has the same count")
