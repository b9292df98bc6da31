"""The errors a run can end with, in one torch-free module that every layer may import."""
from __future__ import annotations

__all__ = ["DivergenceError", "LossScaleError"]


class DivergenceError(FloatingPointError):
    """A measured quantity is NaN or inf; the message names the step and the quantity."""


class LossScaleError(ValueError):
    """The loss being minimised is not the one the bound was derived for, by a constant factor.

    The message names the scale found and both fixes (the lab's own criterion,
    or ``loss_scale=<c>``).
    """
