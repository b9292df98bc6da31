r"""The rate on the device, by name, and how it reaches the optimizer without a host sync.

The rate in force is one float64 device vector laid out by :data:`RATE`: ``lr`` (1/L
clamped, :func:`lipschitz_lab.bounds.learning_rate`), the ``K_z`` and ``L`` that set it,
and the clamp ``code`` (``bounds.CLAMPS[code]``).

How a rate reaches a param group (:func:`lr_mode`):

- ``"tensor"``: ``group["lr"]`` becomes a 0-d tensor and each new rate is copied
  into it on the device.  torch's fused SGD/Adam/AdamW kernels read the rate
  from device memory (float32), and so do Adam/AdamW with ``capturable=True``;
  on the CPU every torch optimizer takes a float64 tensor rate (converted in C++,
  no device involved) and updates exactly as with the float.
- ``"float"``: any other optimizer on an accelerator (foreach/for-loop SGD,
  RMSprop, a third-party one): the rate is set as a Python float, read from the
  device once per rate change (per step with ``recompute="step"``, per epoch
  otherwise) and written only when it or ``lr_scale`` changes.  Build the optimizer
  with ``fused=True`` to avoid even that.
"""
from __future__ import annotations

import torch

from lipschitz_lab.probe.layout import Field, StatLayout

__all__ = ["RATE", "RateWriter", "device_of", "lr_mode", "tensorize"]

#: the rate vector: the rate, the K_z and L that set it, and the clamp code (bounds.CLAMPS)
RATE = StatLayout(Field(name, "local") for name in ("lr", "K_z", "L", "code"))


def device_of(optimizer: torch.optim.Optimizer) -> torch.device:
    """Where the optimizer's parameters live (the CPU for an empty one)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            return p.device
    return torch.device("cpu")


def lr_mode(optimizer: torch.optim.Optimizer) -> str:
    """``"tensor"`` when the optimizer takes a tensor rate without a host sync, else ``"float"``."""
    device = device_of(optimizer)
    if device.type == "cpu":
        return "tensor" if type(optimizer).__module__.startswith("torch.optim") else "float"
    d = optimizer.defaults
    torch_adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    if isinstance(optimizer, (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)) and d.get("fused"):
        return "tensor"
    return "tensor" if torch_adam and d.get("capturable") else "float"


def tensorize(optimizer: torch.optim.Optimizer) -> None:
    """Turn every group's float lr into a 0-d tensor (float32 on an accelerator, float64 on the CPU)."""
    device = device_of(optimizer)
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)


class RateWriter:
    """Writes the rate into the optimizer's groups: ``lr = rate · lr_scale``.

    In ``"tensor"`` mode the rate is copied on the device (no sync).  In ``"float"`` mode
    it is read from the device once per rate change and cached; a step that changes
    neither the rate nor ``lr_scale`` writes nothing, so a rate per epoch costs one sync
    per epoch, not one per step."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.mode = lr_mode(optimizer)
        if self.mode == "tensor":
            tensorize(optimizer)
        self._host: float | None = None      # float mode: the rate, read once per change
        self._written: list[float | None] = []

    def write(self, rate: torch.Tensor, *, changed: bool) -> None:
        """Every group's lr = ``rate · lr_scale`` (``rate`` a float64 0-d device tensor)."""
        groups = self.optimizer.param_groups
        if self.mode == "tensor":
            for group in groups:
                scale = group.get("lr_scale", 1.0)
                value = rate if scale == 1.0 else rate * scale
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].copy_(value)
                else:
                    group["lr"] = float(value)
            return
        if changed or self._host is None:
            self._host = float(rate)                 # the documented host sync, once per rate change
            self._written = []
        for g, group in enumerate(groups):
            value = self._host * group.get("lr_scale", 1.0)
            if g >= len(self._written) or self._written[g] != value:
                group["lr"] = value
        self._written = [g["lr"] for g in groups]

    def write_groups(self, rates: torch.Tensor) -> None:
        """Group g's lr = ``rates[g] · lr_scale`` (one rate per group: the layer-wise rule)."""
        for g, group in enumerate(self.optimizer.param_groups):
            scale = group.get("lr_scale", 1.0)
            value = rates[g] if scale == 1.0 else rates[g] * scale
            if self.mode == "tensor" and isinstance(group["lr"], torch.Tensor):
                group["lr"].copy_(value)
            else:
                group["lr"] = float(value)           # one sync per group and rate change
        self._host, self._written = None, []

    def to_device(self, device: torch.device) -> None:
        """After a resume: the optimizer's state_dict loaded its tensor rates where the
        checkpoint was mapped (the CPU); put them back beside the parameters."""
        if self.mode != "tensor":
            return
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        for group in self.optimizer.param_groups:
            lr = group["lr"]
            if not isinstance(lr, torch.Tensor) or lr.device != device or lr.dtype != dtype:
                group["lr"] = torch.tensor(float(lr), dtype=dtype, device=device)
