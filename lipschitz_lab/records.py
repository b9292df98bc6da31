"""The record schema: defined once, used by the scheduler, trainer, run store and UI.

A record is a plain ``dict`` (picklable, JSON-serialisable once tensors are
turned into floats).  Two kinds flow through one stream:

``kind == "step"``  -- emitted by :class:`~lipschitz_lab.scheduler.LipschitzLR`
after every optimizer step, extended by the trainer with ``loss``/``acc``/``time``.

``kind == "epoch"`` -- emitted by the trainer at the end of each epoch.
"""
from __future__ import annotations

from typing import Any, Callable

Record = dict[str, Any]
Subscriber = Callable[[Record], None]

#: keys every step record carries (issue 3, "Records").
STEP_KEYS = (
    "kind",         # "step"
    "step",         # global optimizer step, 0-based
    "epoch",        # 0-based epoch
    "lr",           # the rate this step's update used (group 0, lr_scale included)
    "K_z",          # this batch's K_z (the configured definition)
    "L",            # this batch's bound in the configured variant (incl. lam*w_max)
    "bound",        # variant name: "paper" | "corrected" | "strict"
    "grad_last",    # measured max |dE/dw| of the last layer (weight and bias)
    "grad_layers",  # {layer name: max |dE/dw|}
    "clamped",      # None | "min_lr" | "max_lr" | "K_z=0"
)

#: optional step keys used by the UI (both bounds drawn) and the trainer.
STEP_OPTIONAL_KEYS = (
    "L_paper", "L_corrected", "L_strict",  # the bound in every variant, for the gap plots
    "kz_mode",      # "train" (online probe) or "eval" (the authors' extra pass)
    "K_a", "y_norm", "w_max", "lam", "m", "k",
    "loss", "acc", "time",
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
