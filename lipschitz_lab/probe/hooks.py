r"""The probe: the statistics behind L, measured by hooks during the normal step.

A forward hook on the last layer sees its input, the penultimate activations
:math:`A` (m rows; any trailing shape is flattened to m × d), and its output
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
accumulation) are measured as their union batch: squared norms and m add up,
maxima take the max.  Under ``torch.distributed`` the same union rule runs
across ranks (:mod:`lipschitz_lab.distributed`).

:meth:`Probe.read_device` returns the step's numbers as one device vector
(:class:`~lipschitz_lab.probe.stats.StepStats`) without waiting for the device;
:meth:`Probe.read` is the same, decoded to plain numbers (one sync).  Only
forwards with autograd enabled are measured: run validation under
``torch.no_grad()``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lipschitz_lab import distributed
from lipschitz_lab.errors import DivergenceError
from lipschitz_lab.probe.scale import ScaleCheck
from lipschitz_lab.probe.spectral import SIGMA_METHODS, PowerIteration
from lipschitz_lab.probe.stats import EPOCH_SPAN, StepStats, decode, epoch_dict

__all__ = ["Probe", "find_last_linear"]


def find_last_linear(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The layer whose input is the penultimate activation: ``layer`` by module
    name, else the last ``nn.Linear`` in registration order."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise ValueError(f"layer={layer!r} is not a module of the model; "
                             f"modules: {', '.join(n for n in modules if n)}")
        return layer, modules[layer]
    linears = [(n, mod) for n, mod in modules.items() if isinstance(mod, nn.Linear)]
    if not linears:
        raise ValueError("layer=None but the model has no nn.Linear; name the last layer with layer=...")
    return linears[-1]


def _first_tensor(args: Iterable[Any]) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _add(old, new):   # a running sum that starts at the first term
    return new if old is None else old + new


class Probe:
    """Hooks that measure K_z, K_a, ||y||, m, w_max, σ_max and the gradient maxima.

    Usage, in a plain loop (the scheduler does this for you)::

        with Probe(model) as probe:
            out = model(x); probe.observe_targets(y)   # targets: mse only
            crit(out, y).backward()
            stats = probe.read()                       # before zero_grad()
            opt.step(); opt.zero_grad()

    Args:
        model: any ``nn.Module`` (a DDP wrapper too).
        layer: module name of the last layer; ``None`` finds the last ``nn.Linear``.
        sync_distributed: all-reduce the statistics when ``torch.distributed``
            is initialised (union-batch rule, see the module docstring).
        sigma: measure σ_max([A, 1]) for the smoothness bound: ``"power"``,
            ``"frobenius"`` (see :mod:`~lipschitz_lab.probe.spectral`) or None.
        power_iters: power-iteration steps per training forward.
        scale_check: a :class:`~lipschitz_lab.probe.scale.ScaleCheck` to feed.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, sync_distributed: bool = True,
                 sigma: str | None = None, power_iters: int = 4, scale_check: ScaleCheck | None = None):
        if sigma is not None and sigma not in SIGMA_METHODS:
            raise ValueError(f"sigma must be one of {', '.join(SIGMA_METHODS)} or None; got sigma={sigma!r}")
        self.model, self.sync_distributed, self.sigma = model, sync_distributed, sigma
        self.layer_name, self.layer = find_last_linear(model, layer)
        self._power = PowerIteration(power_iters) if sigma == "power" else None
        self.scale_check = scale_check
        # parameters in a fixed order, with the owning module of each
        self.param_names: list[str] = []
        self._params: list[nn.Parameter] = []
        self.owners: list[str] = []
        seen: set[int] = set()
        for mod_name, mod in model.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                if p.requires_grad and id(p) not in seen:   # a tied weight counts once
                    seen.add(id(p))
                    self.param_names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
                    self._params.append(p)
                    self.owners.append(mod_name or "(root)")
        last_ids = {id(p) for p in self.layer.parameters()}
        self.is_last = [id(p) in last_ids for p in self._params]
        self._epoch: torch.Tensor | None = None    # running maxima of LAYOUT[:EPOCH_SPAN]
        self._epoch_flags = (False, False)
        self.last: dict[str, Any] | None = None    # the last read()
        self.reads = 0
        self._measuring = False
        self._w_snap: torch.Tensor | None = None
        self._clear_step()
        self._handle = self.layer.register_forward_hook(self._on_forward, with_kwargs=True)

    # -- hooks ---------------------------------------------------------------
    def _clear_step(self) -> None:
        # 0-d tensors of the step being measured (None: nothing seen yet)
        self._frob_sq = self._max_abs = self._K_a_sq = self._y_sq = self._sigma_sq = None
        self._m = 0

    @torch.compiler.disable     # under torch.compile the hook runs eagerly, outside the graph
    def _on_forward(self, module, args, kwargs, output) -> None:
        if not (torch.is_grad_enabled() or self._measuring):
            return  # a validation forward: not part of the training step
        a = _first_tensor(args) if args else _first_tensor(kwargs.values())
        out = output if isinstance(output, torch.Tensor) else _first_tensor(output)
        if a is None:
            return
        if out is not None and self.scale_check is not None and not self._measuring:
            self.scale_check.capture(out)
        with torch.no_grad(), torch.autocast(a.device.type, enabled=False):
            a = a.detach()
            acc = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else None
            frob = torch.linalg.vector_norm(a, dtype=acc).double()   # K_z^2 would overflow float32 at 1.8e19
            self._frob_sq = _add(self._frob_sq, frob * frob)
            max_abs = torch.linalg.vector_norm(a, ord=math.inf, dtype=acc)
            self._max_abs = max_abs if self._max_abs is None else torch.maximum(self._max_abs, max_abs)
            if out is not None:
                K_a = torch.linalg.vector_norm(out.detach(), dtype=acc).double()
                self._K_a_sq = _add(self._K_a_sq, K_a * K_a)
            if self._power is not None and not self._measuring:
                self._sigma_sq = _add(self._sigma_sq, self._power.sigma_sq(a))   # union: λ_max(ΣBᵢᵀBᵢ) ≤ Σλᵢ
            self._m += a.shape[0] if a.dim() > 0 else 1

    def observe_targets(self, y: torch.Tensor) -> None:
        """Record ``||y||_2`` of this step's targets (mse needs it; the loss-scale check uses y)."""
        if self.scale_check is not None and not self._measuring:
            self.scale_check.targets(y)
        with torch.no_grad():
            n = torch.linalg.vector_norm(y.detach().float()).double()
            self._y_sq = _add(self._y_sq, n * n)

    # -- reading -------------------------------------------------------------
    def has_batch(self) -> bool:
        """True when a training forward was measured since the last read."""
        return self._frob_sq is not None

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

    def read_device(self, *, update_epoch: bool = True) -> StepStats | None:
        """The step's statistics as one device vector (no sync), or None without a forward.

        Call it after ``backward()`` and before ``zero_grad()``.  ``update_epoch=False``
        leaves the epoch's running maxima alone (a step the optimizer skipped).
        """
        if self._frob_sq is None:
            return None
        dev = self._frob_sq.device
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        has = (self._K_a_sq is not None, self._y_sq is not None, self._sigma_sq is not None or self.sigma is not None)
        sigma_sq = self._sigma_sq
        if sigma_sq is None and self.sigma == "frobenius":
            sigma_sq = self._frob_sq + self._m      # ‖[A, 1]‖_F² ≥ σ_max²
        idx = [i for i, p in enumerate(self._params) if p.grad is not None]
        grads = [self._params[i].grad.detach() for i in idx]
        g = list(torch._foreach_norm(grads, math.inf)) if grads else []
        w = self._w_snap if self._w_snap is not None else self._w_max_tensor()
        self._w_snap = None
        sums = [self._frob_sq, self._K_a_sq if has[0] else zero, self._y_sq if has[1] else zero,
                torch.full((), float(self._m), dtype=torch.float64, device=dev),
                sigma_sq if sigma_sq is not None else zero]
        maxes = [self._max_abs, w if w is not None else zero, *g]
        S = torch.stack(sums)
        M = torch.stack([t.to(device=dev) for t in maxes]).to(torch.float64)
        if self.sync_distributed and distributed.is_distributed():
            distributed.all_reduce_sum_max(S, M)
        values = torch.cat([S, M])
        scale = self.scale_check.reduce() if self.scale_check is not None else None
        if scale is not None:
            values = torch.cat([values, scale.to(dev)])
        stats = StepStats(values, idx, self._m, has[0], has[1], has[2], scale)
        self._clear_step()
        if update_epoch:
            self.update_epoch(stats)
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

    # -- an epoch's running maxima -------------------------------------------
    def update_epoch(self, stats: StepStats) -> None:
        """Fold a step into the epoch's running maxima (read_device does it by default)."""
        head = stats.values[:EPOCH_SPAN]
        self._epoch = head if self._epoch is None else torch.maximum(self._epoch, head)
        self._epoch_flags = (stats.has_K_a, stats.has_y)

    def take_epoch_max(self) -> tuple[torch.Tensor | None, tuple[bool, bool]]:
        """The epoch's running maxima (device vector, LAYOUT[:EPOCH_SPAN]) and (has K_a, has y); resets."""
        done, flags = self._epoch, self._epoch_flags
        self._epoch = None
        return done, flags

    def put_epoch_max(self, values: list[float] | None, flags: tuple[bool, bool]) -> None:
        """Restore running maxima saved as plain numbers (a resume mid-epoch)."""
        self._epoch = None if values is None else torch.tensor(values, dtype=torch.float64)
        self._epoch_flags = tuple(flags)

    def epoch_max_values(self) -> list[float] | None:
        """The running maxima as plain numbers (syncs), for a checkpoint."""
        return None if self._epoch is None else self._epoch.tolist()
    @property
    def epoch_max(self) -> dict[str, float]:
        """The epoch's running maxima by name (syncs); {} before the first read."""
        if self._epoch is None:
            return {}
        return epoch_dict(self._epoch.tolist(), *self._epoch_flags)

    def reset_epoch(self) -> dict[str, float]:
        """Start a new epoch's running maxima; returns the finished epoch's (syncs)."""
        done = self.epoch_max
        self._epoch = None
        return done

    # -- the authors' extra pass ---------------------------------------------
    def measure(self, loader: Iterable, *, device: torch.device | str | None = None,
                label: str = "measurement") -> dict[str, Any]:
        """The authors' protocol (see :func:`lipschitz_lab.probe.measure.measure`)."""
        from lipschitz_lab.probe.measure import measure
        return measure(self, loader, device=device, label=label)

    # -- lifetime ------------------------------------------------------------
    def detach(self) -> None:
        """Remove the hook; the probe measures nothing afterwards."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._clear_step()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def __repr__(self) -> str:
        return f"Probe(layer={self.layer_name!r}, params={len(self._params)})"
