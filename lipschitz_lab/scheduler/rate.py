r"""The rate on the device: lr = 1/L clamped, and how it reaches the optimizer without a host sync.

:func:`clamp_rate` is :func:`lipschitz_lab.bounds.learning_rate` for tensors: the
same rule and the same order of cases, as float64 device arithmetic, with the
case as a number (``CLAMPS[code]``) instead of a string, so nothing waits for
the device.  On the CPU it gives bit for bit the rates of the float version.

How a rate reaches a param group (:func:`lr_mode`):

- ``"tensor"``: ``group["lr"]`` becomes a 0-d tensor and each new rate is copied
  into it on the device.  torch's fused SGD/Adam/AdamW kernels read the rate
  from device memory (float32), and so do Adam/AdamW with ``capturable=True``;
  on the CPU every torch optimizer takes a float64 tensor rate (converted in C++,
  no device involved) and updates exactly as with the float.
- ``"float"``: any other optimizer on an accelerator (foreach/for-loop SGD,
  RMSprop, a third-party one): the rate is set as a Python float, which costs
  one host sync per rate change (per step with ``recompute="step"``, per epoch
  otherwise).  Build the optimizer with ``fused=True`` to avoid it.
"""
from __future__ import annotations

import torch

__all__ = ["CLAMPS", "clamp_rate", "lr_mode", "tensorize", "write_group_rates", "write_rate"]

#: what the code in a rate's record means (0: the rate is 1/L as it is)
CLAMPS = (None, "min_lr", "max_lr", "K_z=0", "L<0", "error: L = 0 and max_lr=None",
          "error: L < 0 and max_lr=None", "error: L is not finite")


def clamp_rate(D: torch.Tensor, K_z: torch.Tensor, min_lr: float | None, max_lr: float | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lr, code)`` as float64 0-d tensors: lr = 1/D clamped to [min_lr, max_lr]."""
    D = D.to(torch.float64)
    lr = 1.0 / D
    code = torch.zeros_like(lr)
    if max_lr is not None:
        hi = lr > max_lr
        lr, code = torch.where(hi, max_lr, lr), torch.where(hi, 2.0, code)
    if min_lr is not None:
        lo = lr < min_lr
        lr, code = torch.where(lo, min_lr, lr), torch.where(lo, 1.0, code)
    zero, neg = D == 0, D < 0
    if max_lr is None:
        lr = torch.where(zero | neg, torch.nan, lr)
        code = torch.where(zero, 5.0, torch.where(neg, 6.0, code))
    else:
        lr = torch.where(zero | neg, max_lr, lr)
        code = torch.where(zero, 3.0, torch.where(neg, 4.0, code))
    code = torch.where((K_z == 0) & (code == 2.0), 3.0, code)     # K_z = 0 at the max_lr clamp: say why
    code = torch.where(torch.isfinite(D), code, 7.0)
    return lr, code


def _device(optimizer: torch.optim.Optimizer) -> torch.device:
    for group in optimizer.param_groups:
        for p in group["params"]:
            return p.device
    return torch.device("cpu")


def lr_mode(optimizer: torch.optim.Optimizer) -> str:
    """``"tensor"`` when the optimizer takes a tensor rate without a host sync, else ``"float"``."""
    device = _device(optimizer)
    if device.type == "cpu":
        return "tensor" if type(optimizer).__module__.startswith("torch.optim") else "float"
    d = optimizer.defaults
    torch_adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    if isinstance(optimizer, (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)) and d.get("fused"):
        return "tensor"
    return "tensor" if torch_adam and d.get("capturable") else "float"


def tensorize(optimizer: torch.optim.Optimizer) -> None:
    """Turn every group's float lr into a 0-d tensor (float32 on an accelerator, float64 on the CPU)."""
    device = _device(optimizer)
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)


def write_rate(optimizer: torch.optim.Optimizer, rate: torch.Tensor, mode: str) -> None:
    """Every group's lr = ``rate · lr_scale`` (``rate`` a float64 0-d tensor)."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        value = rate if scale == 1.0 else rate * scale
        if mode == "tensor" and isinstance(group["lr"], torch.Tensor):
            group["lr"].copy_(value)
        else:
            group["lr"] = float(value)          # the documented host sync ("float" mode)


def write_group_rates(optimizer: torch.optim.Optimizer, rates: torch.Tensor, mode: str) -> None:
    """Group g's lr = ``rates[g] · lr_scale`` (one rate per group: the layer-wise rule)."""
    for g, group in enumerate(optimizer.param_groups):
        scale = group.get("lr_scale", 1.0)
        value = rates[g] if scale == 1.0 else rates[g] * scale
        if mode == "tensor" and isinstance(group["lr"], torch.Tensor):
            group["lr"].copy_(value)
        else:
            group["lr"] = float(value)
