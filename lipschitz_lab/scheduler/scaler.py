"""torch.amp.GradScaler, as LipschitzLR reads it: the loss scale of a backward, on the device.

With fp16 and a GradScaler the backward runs on ``scale · loss``: the gradient at the logits
that the loss-scale check sees is ``scale`` times the loss's, and a tied layer's δᵀA too
(``.grad`` is unscaled again by ``scaler.step``).  The check divides by the scale of that
very backward, read from the scaler's scale tensor when the gradient arrives: no host sync.
A step the scaler skips (inf or NaN in the gradients) never reaches ``optimizer.step()``;
LipschitzLR then does not measure it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["grad_scale_of"]


def grad_scale_of(scaler) -> Callable[[], torch.Tensor | None] | None:
    """A function giving the scaler's current scale tensor (None when disabled or not yet made);
    torch keeps it in ``GradScaler._scale`` (``get_scale()`` would sync)."""
    if scaler is None:
        return None
    if not hasattr(scaler, "scale") or not hasattr(scaler, "is_enabled"):
        raise ValueError(f"scaler must be a torch.amp.GradScaler; got scaler={scaler!r}")
    return lambda: getattr(scaler, "_scale", None) if scaler.is_enabled() else None
