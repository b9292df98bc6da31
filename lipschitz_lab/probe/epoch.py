r"""An epoch's running maxima of the step statistics: what the paper's per-epoch rate reads.

.. math::

    K_z^{\text{epoch}} = \max_{\text{steps}} K_z, \qquad m^{\text{epoch}} = \max_{\text{steps}} m

(and likewise K_a, ‖y‖, σ_max), kept on the device as one vector laid out by
``StatLayout.sub(EPOCH_FIELDS)``; nothing waits for the device until a checkpoint asks.
"""
from __future__ import annotations

from typing import Any

import torch

from lipschitz_lab.probe.stats import EPOCH_FIELDS, StepStats, bound_inputs

__all__ = ["EpochMaxima"]

#: the order an older checkpoint saved its running maxima in (a list, before they had names)
_OLD_ORDER = ("frob_sq", "K_a_sq", "y_sq", "rows", "sigma_sq", "max_abs")


class EpochMaxima:
    """Running maxima of :data:`~lipschitz_lab.probe.stats.EPOCH_FIELDS` over an epoch's steps."""

    def __init__(self):
        self.values: torch.Tensor | None = None     # float64, EPOCH_FIELDS in order
        self.flags = {"has_K_a": False, "has_y": False, "has_sigma": False, "has_counted": False}

    def update(self, stats: StepStats) -> None:
        head = stats.layout.take(stats.values, EPOCH_FIELDS)
        self.values = head if self.values is None else torch.maximum(self.values, head)
        self.flags = {**stats.flags(), "has_sigma": True}

    def take(self) -> tuple[torch.Tensor | None, dict[str, bool]]:
        """The maxima (device vector) and the flags of the last step; starts a new epoch."""
        done, self.values = self.values, None
        return done, dict(self.flags)

    def bound_inputs(self, values: torch.Tensor, flags: dict[str, bool], kz: str | None) -> dict[str, Any]:
        """A taken vector as the bounds take it (device tensors; ``kz=None``: both K_z)."""
        named = dict(zip(EPOCH_FIELDS, values.unbind()))
        return bound_inputs(named, kz=kz, **flags)

    def plain(self) -> dict[str, Any]:
        """The running maxima by name, as plain numbers (syncs); {} before the first step."""
        if self.values is None:
            return {}
        named = dict(zip(EPOCH_FIELDS, self.values.tolist()))
        out = bound_inputs(named, kz=None, **self.flags)
        out["m"] = int(round(out["m"]))
        return {k: v for k, v in out.items() if v is not None and k != "sigma_max"}

    # -- a checkpoint's share ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        values = None if self.values is None else dict(zip(EPOCH_FIELDS, self.values.tolist()))
        return {"values": values, "flags": dict(self.flags)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        values = state["values"]
        if isinstance(values, list):            # an older checkpoint: six numbers, m as rows
            values = dict(zip(_OLD_ORDER, values), counted=0.0)
        self.values = None if values is None else torch.tensor([values[n] for n in EPOCH_FIELDS],
                                                               dtype=torch.float64, device=device)
        self.flags = {**self.flags, **state["flags"]}
