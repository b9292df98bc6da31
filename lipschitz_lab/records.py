"""The record schema: defined once, used by the scheduler, trainer, run store and UI.

A record is a plain ``dict`` (picklable, JSON-serialisable once tensors are
turned into floats).  Two kinds flow through one stream:

``kind == "step"``  -- one per optimizer step, from :class:`~lipschitz_lab.scheduler.LipschitzLR`
(or the trainer, for other policies), extended by the trainer with ``loss``/``acc``/``time``.
Besides :data:`STEP_KEYS`, a LipschitzLR record carries ``L_paper``, ``L_corrected``,
``L_strict`` (this batch's bound in every variant, for the gap plots), ``K_z_frobenius``,
``K_z_max_abs``, ``K_a``, ``y_norm``, ``w_max``, ``lam``, ``m``, ``k``, ``kz``, ``kz_mode``,
``K_z_rate``/``L_rate``/``rate_source`` (what set the rate in force), ``lr_next`` (the rate set
for the next step, ``lr_scale`` included), ``loss_scale``, and the smoothness ``sigma_max``,
``beta`` and ``lr_smooth`` = c/β (None when σ_max was not measured).

``kind == "epoch"`` -- emitted by the trainer at the end of each epoch.
"""
from __future__ import annotations

from typing import Any, Callable

Record = dict[str, Any]
Subscriber = Callable[[Record], None]

#: keys every step record carries.  ``lr`` is defined here, once: the rate this step's update
#: used, for param group 0, ``lr_scale`` included (so a ×0.1 policy records 0.1/L).
STEP_KEYS = (
    "kind",         # "step"
    "step",         # global optimizer step, 0-based
    "epoch",        # 0-based epoch
    "lr",           # the rate this step's update used (group 0, lr_scale included)
    "K_z",          # this batch's K_z (the configured definition)
    "L",            # this batch's bound in the configured variant, loss_scale and lam*w_max included
                    # (for bound="smooth": the strict bound; beta is in "beta")
    "bound",        # "paper" | "corrected" | "strict" | "smooth" (None: not a LipschitzLR run)
    "grad_last",    # measured max |dE/dw| of the last layer (weight and bias)
    "grad_layers",  # {layer name: max |dE/dw|}
    "clamped",      # None | "min_lr" | "max_lr" | "K_z=0" | "L<0"
)

#: keys every epoch record carries.
EPOCH_KEYS = (
    "kind",        # "epoch"
    "epoch",
    "step",        # global step at the end of the epoch
    "lr",
    "train_loss", "train_acc",
    "val_loss", "val_acc",
    "test_loss", "test_acc",
    "time",        # wall seconds since the run started, at the epoch's end
)


def step_record(**fields: Any) -> Record:
    """Build a step record, checking that the required keys are present."""
    rec: Record = {"kind": "step", **fields}
    missing = [k for k in STEP_KEYS if k not in rec]
    if missing:
        raise ValueError(f"step record is missing fields: {missing}")
    return rec


def epoch_record(**fields: Any) -> Record:
    """Build an epoch record; metrics a run does not have are None."""
    rec: Record = {"kind": "epoch"}
    for key in EPOCH_KEYS[1:]:
        rec[key] = fields.pop(key, None)
    rec.update(fields)
    return rec
