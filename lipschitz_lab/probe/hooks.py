r"""The probe: the statistics behind L, measured by hooks during the normal step.

A forward hook on the last layer sees its input, the penultimate activations
:math:`A` (every position of a (B, T, d) input is a row), and its output
:math:`a^{[L]}`; after ``backward()`` the gradient maxima are read from ``.grad``.
Nothing runs an extra pass, and only 0-d tensors are kept between the forward
and the read.

.. math::

    K_z^{\text{frobenius}} = \|A\|_F, \qquad
    K_z^{\text{max\_abs}} = \max_{ij} |A_{ij}|, \qquad
    K_a = \|a^{[L]}\|_2, \qquad \|y\|_2, \qquad
    g_\ell = \max_{w \in \ell} |\partial E / \partial w|

where the Frobenius definition is the authors' code and ``max_abs`` the
paper's text (eq. 6).  Several training forwards before one read (gradient
accumulation) are measured as their union batch (:mod:`.accumulate`).  Under
``torch.distributed`` the same union rule runs across ranks (:mod:`.layout`).

:meth:`Probe.read_device` returns the step's numbers as one device vector
(:class:`~lipschitz_lab.probe.stats.StepStats`, laid out by name) without waiting
for the device; :meth:`Probe.read` is the same, decoded to plain numbers (one sync).
Only forwards with autograd enabled are measured: run validation under
``torch.no_grad()``.

A last layer whose weight is tied to another module (a language model's ``lm_head``
and its token embedding) has a ``.grad`` that sums both uses; the probe then
measures the last layer's own share, :math:`\max|\delta^\top A|`, from its hooks.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.probe.accumulate import StepSums
from lipschitz_lab.probe.epoch import EpochMaxima
from lipschitz_lab.probe.params import find_last_linear, first_tensor, trainable_parameters
from lipschitz_lab.probe.scale import ScaleCheck
from lipschitz_lab.probe.spectral import SIGMA_METHODS, PowerIteration
from lipschitz_lab.probe.stats import NO_GRAD, StepStats, decode, probe_layout
from lipschitz_lab.probe.tied import OwnGradient, tied_parameters

__all__ = ["Probe", "find_last_linear"]


class Probe:
    """Hooks that measure K_z, K_a, ||y||, m, w_max, σ_max and the gradient maxima.

    Usage, in a plain loop (the scheduler does this for you)::

        with Probe(model) as probe:
            out = model(x); probe.observe_targets(y)   # targets: mse's ||y||, m with padding
            crit(out, y).backward()
            stats = probe.read()                       # before zero_grad()
            opt.step(); opt.zero_grad()

    Args:
        model: any ``nn.Module`` (a DDP wrapper too).
        layer: module name of the last layer; ``None`` finds the last ``nn.Linear``.
        sync_distributed: all-reduce the statistics when ``torch.distributed``
            is initialised (union-batch rule).
        sigma: measure σ_max([A, 1]) for the smoothness bound: ``"power"``,
            ``"frobenius"`` (see :mod:`~lipschitz_lab.probe.spectral`) or None.
        power_iters: power-iteration steps per training forward.
        scale_check: a :class:`~lipschitz_lab.probe.scale.ScaleCheck` to feed.
        grad_scale: returns the loss scale of the backward in progress (a GradScaler's
            scale tensor) or None; gradients read from hooks are divided by it.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, sync_distributed: bool = True,
                 sigma: str | None = None, power_iters: int = 4, scale_check: ScaleCheck | None = None,
                 grad_scale: Callable[[], torch.Tensor | None] | None = None):
        if sigma is not None and sigma not in SIGMA_METHODS:
            raise ValueError(f"sigma must be one of {', '.join(SIGMA_METHODS)} or None; got sigma={sigma!r}")
        self.model, self.sync_distributed, self.sigma = model, sync_distributed, sigma
        self.layer_name, self.layer = find_last_linear(model, layer)
        self.power = PowerIteration(power_iters) if sigma == "power" else None
        self.scale_check = scale_check
        self.param_names, self._params, self.owners = trainable_parameters(model)
        last_ids = {id(p) for p in self.layer.parameters()}
        self.is_last = [id(p) in last_ids for p in self._params]
        tied = tied_parameters(model, self.layer)
        self.own_grad = OwnGradient(grad_scale) if tied else None
        if tied:                  # the tied weight's .grad holds both uses: not the last layer's
            self.is_last = [last and id(p) not in tied for p, last in zip(self._params, self.is_last)]
        self.layout = probe_layout(len(self._params), own_grad=tied,
                                   check_size=scale_check.layout.size if scale_check is not None else 0)
        self.epoch = EpochMaxima()
        self.last: dict[str, Any] | None = None    # the last read()
        self.reads = 0
        self.measuring = False                      # the authors' eval pass (probe/measure.py)
        self.sums = StepSums()
        self._w_snap: torch.Tensor | None = None
        self.handle = self.layer.register_forward_hook(self._on_forward, with_kwargs=True)

    # -- hooks ---------------------------------------------------------------
    @torch.compiler.disable     # under torch.compile the hook runs eagerly, outside the graph
    def _on_forward(self, module, args, kwargs, output) -> None:
        if not (torch.is_grad_enabled() or self.measuring):
            return  # a validation forward: not part of the training step
        a = first_tensor(args) if args else first_tensor(kwargs.values())
        out = output if isinstance(output, torch.Tensor) else first_tensor(output)
        if a is None:
            return
        training = not self.measuring
        if out is not None and training and out.requires_grad:
            if self.scale_check is not None:
                self.scale_check.capture(out)
            if self.own_grad is not None:
                self.own_grad.capture(a, out)
        with torch.no_grad(), torch.autocast(a.device.type, enabled=False):
            a = a.detach()
            self.sums.add_activations(a)
            if out is not None:
                self.sums.add_output(out)
            if self.power is not None and training:
                self.sums.add_sigma(self.power.sigma_sq(a))

    def observe_targets(self, y: torch.Tensor) -> None:
        """This step's targets: ``||y||_2`` (mse), the targets that count (m), the loss-scale check."""
        if self.scale_check is not None and not self.measuring:
            self.scale_check.targets(y)
        with torch.no_grad():
            self.sums.add_targets(y)

    # -- reading -------------------------------------------------------------
    def has_batch(self) -> bool:
        """True when a training forward was measured since the last read."""
        return not self.sums.empty

    def _w_max_tensor(self) -> torch.Tensor | None:
        if not self._params:
            return None
        weights = [p.detach() for p in self._params]
        return torch.stack([n.float() for n in torch._foreach_norm(weights)]).max()

    def snapshot_w_max(self) -> None:
        """Take max ‖w‖ now (no sync), for the next read: the scheduler calls it just
        before ``optimizer.step()``, so that w_max belongs to the weights behind the gradient."""
        self._w_snap = self._w_max_tensor()

    def w_max_device(self) -> torch.Tensor:
        """max ‖w‖ over single parameter tensors, as a float64 0-d device tensor (no sync)."""
        w = self._w_max_tensor()
        return torch.zeros((), dtype=torch.float64) if w is None else w.double()

    def w_max(self) -> float:
        """max ‖w‖ over single parameter tensors (biases and BatchNorm included); syncs."""
        return float(self.w_max_device())

    def _grad_maxima(self, dev) -> tuple[list[int], torch.Tensor]:
        """Which parameters have a gradient, and one maximum per parameter (NO_GRAD where none)."""
        idx = [i for i, p in enumerate(self._params) if p.grad is not None]
        if not self._params:
            return idx, torch.zeros(0, dtype=torch.float64, device=dev)
        grads = [self._params[i].grad.detach() for i in idx]
        norms = iter(torch._foreach_norm(grads, math.inf) if idx else ())
        none = torch.full((), NO_GRAD, dtype=torch.float64, device=dev)
        return idx, torch.stack([next(norms).to(device=dev, dtype=torch.float64) if p.grad is not None
                                 else none for p in self._params])

    def _named(self, dev) -> dict[str, torch.Tensor]:
        """This step's statistics by name, as device tensors (the layout packs them)."""
        s, zero = self.sums, torch.zeros((), dtype=torch.float64, device=dev)
        sigma_sq = s.sigma_sq
        if sigma_sq is None and self.sigma == "frobenius":
            sigma_sq = s.frob_sq + s.rows          # ‖[A, 1]‖_F² ≥ σ_max²
        w = self._w_snap if self._w_snap is not None else self._w_max_tensor()
        return {"frob_sq": s.frob_sq, "K_a_sq": s.K_a_sq if s.K_a_sq is not None else zero,
                "y_sq": s.y_sq if s.y_sq is not None else zero, "rows": zero + s.rows,
                "counted": s.counted if s.counted is not None else zero,
                "sigma_sq": sigma_sq if sigma_sq is not None else zero, "max_abs": s.max_abs,
                "w_max": w if w is not None else zero}

    def read_device(self, *, update_epoch: bool = True) -> StepStats | None:
        """The step's statistics as one device vector (no sync), or None without a forward.

        Call it after ``backward()`` and before ``zero_grad()``.  ``update_epoch=False``
        leaves the epoch's running maxima alone (a step the optimizer skipped).
        """
        if self.sums.empty:
            return None
        s, dev = self.sums, self.sums.frob_sq.device
        named = self._named(dev)
        idx, named["grad"] = self._grad_maxima(dev)
        if self.own_grad is not None:
            named["own_grad"] = self.own_grad.take(dev)
        check = self.scale_check.reduce(dev) if self.scale_check is not None else None
        if self.scale_check is not None:
            named["check"] = check if check is not None else self.scale_check.layout.zeros(dev)
        values = self.layout.pack(named, device=dev)
        if self.sync_distributed:
            values = self.layout.all_reduce(values)
        stats = StepStats(values, self.layout, idx, s.rows, s.K_a_sq is not None, s.y_sq is not None,
                          s.sigma_sq is not None or self.sigma is not None, s.counted is not None,
                          check is not None)
        self._w_snap = None
        s.clear()
        if update_epoch:
            self.epoch.update(stats)
        self.reads += 1
        return stats

    def decode(self, stats: StepStats, values: list[float], step: int) -> dict[str, Any]:
        """Plain numbers of :meth:`read_device`'s vector (``values = stats.values.tolist()``)."""
        return decode(stats, values, label=f"step {step}", layer=self.layer_name, params=self.param_names,
                      owners=self.owners, is_last=self.is_last)

    def read(self, step: int | None = None, *, strict: bool = True) -> dict[str, Any] | None:
        """The step's statistics as plain Python numbers, or None without a forward.

        One device sync.  NaN/inf raises :class:`DivergenceError`; with
        ``strict=False`` the message is returned in ``stats["nonfinite"]``.
        """
        step = self.reads if step is None else step
        stats = self.read_device()
        if stats is None:
            return None
        out = self.decode(stats, stats.values.tolist(), step)
        if out["nonfinite"] and strict:
            raise DivergenceError(out["nonfinite"])
        self.last = out
        return out

    # -- an epoch's running maxima (probe/epoch.py) -----------------------------
    @property
    def epoch_max(self) -> dict[str, float]:
        """The epoch's running maxima by name (syncs); {} before the first read."""
        return self.epoch.plain()

    def reset_epoch(self) -> dict[str, float]:
        """Start a new epoch's running maxima; returns the finished epoch's (syncs)."""
        done = self.epoch_max
        self.epoch.take()
        return done

    # -- the authors' extra pass ---------------------------------------------
    def measure(self, loader: Iterable, *, device: torch.device | str | None = None,
                label: str = "measurement") -> dict[str, Any]:
        """The authors' protocol (see :func:`lipschitz_lab.probe.measure.measure`)."""
        from lipschitz_lab.probe.measure import measure
        return measure(self, loader, device=device, label=label)

    # -- state and lifetime ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain numbers: the epoch's running maxima and the power iteration's vector (syncs)."""
        return {"epoch": self.epoch.state_dict(),
                "power_v": None if self.power is None or self.power.v is None else self.power.v.tolist()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.epoch.load_state_dict(state["epoch"], device)
        if state.get("power_v") is not None and self.power is not None:
            self.power.v = torch.tensor(state["power_v"], dtype=torch.float64, device=device)

    def detach(self) -> None:
        """Remove the hook; the probe measures nothing afterwards."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self.sums.clear()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def __repr__(self) -> str:
        return f"Probe(layer={self.layer_name!r}, params={len(self._params)})"
