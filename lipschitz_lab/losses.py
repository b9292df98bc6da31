"""The torch criteria that match the symbolic losses term for term.

Each criterion returns the batch mean, so that the paper's ``1/m`` (m = batch
size) is part of E, as in eqs. 7, 10 and 16.  The symbolic layer derives the
bounds for exactly these functions; the tests use them as autograd oracles.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("mse", "bce", "softmax_ce", "label_smoothed_ce")

def loss_names() -> tuple[str, ...]:
    """Every loss usable for training, built-ins first (the live list: read it, do not copy it)."""
    return LOSSES


#: what kind of target each loss needs
TASKS = {
    "mse": "regression",
    "bce": "binary",
    "softmax_ce": "multiclass",
    "label_smoothed_ce": "multiclass",
}


def make_criterion(loss: str, *, eps: float = 0.1):
    """Return ``criterion(output, target) -> scalar`` for a loss name.

    - ``mse``: E = 1/(2m) Σ (a - y)^2, one output (eq. 7).
    - ``bce``: binary cross-entropy on a sigmoid of the single logit (eq. 10).
    - ``softmax_ce``: softmax cross-entropy over k classes (eq. 16).
    - ``label_smoothed_ce``: the same with label smoothing ``eps``.
    """
    if loss == "mse":
        def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return 0.5 * F.mse_loss(output.reshape(target.shape), target.to(output.dtype))
        return mse
    if loss == "bce":
        def bce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(
                output.reshape(target.shape), target.to(output.dtype))
        return bce
    if loss == "softmax_ce":
        return F.cross_entropy
    if loss == "label_smoothed_ce":
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got eps={eps!r}")

        def label_smoothed_ce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(output, target, label_smoothing=eps)
        return label_smoothed_ce
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
