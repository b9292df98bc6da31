r"""The probe: the statistics behind L, measured by hooks during the normal step.

A forward hook on the last layer sees its input, the penultimate activations
:math:`A` (m rows; any trailing shape is flattened to m × d), and its output
:math:`a^{[L]}`; :meth:`Probe.read`, called after ``backward()``, reads the
gradient maxima from ``.grad``.  Nothing runs an extra pass, and only 0-d
tensors are kept between the forward and the read.

.. math::

    K_z^{\text{frobenius}} = \|A\|_F, \qquad
    K_z^{\text{max\_abs}} = \max_{ij} |A_{ij}|, \qquad
    K_a = \|a^{[L]}\|_2, \qquad \|y\|_2, \qquad
    g_\ell = \max_{w \in \ell} |\partial E / \partial w|

where the Frobenius definition is the authors' code and ``max_abs`` the
paper's text (eq. 6); m is the number of rows of :math:`A`.  Several training
forwards before one read (gradient accumulation) are measured as their union
batch: squared norms and m add up, maxima take the max.  Under
``torch.distributed`` the same union rule runs across ranks
(:mod:`lipschitz_lab.distributed`), so all ranks read identical statistics.

Only forwards with autograd enabled are measured: run validation under
``torch.no_grad()``.  :meth:`Probe.measure` is the authors' extra eval-mode pass.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lipschitz_lab import distributed

__all__ = ["DivergenceError", "Probe", "find_last_linear"]

#: statistics kept as running maxima over the epoch (``Probe.epoch_max``)
EPOCH_KEYS = ("K_z_frobenius", "K_z_max_abs", "m", "K_a", "y_norm")


class DivergenceError(FloatingPointError):
    """A measured quantity is NaN or inf; the message names the step and the quantity."""


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


def _float64_vector(values: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """0-dim tensors -> one float64 vector on ``device``.

    On one device: a single stack (it promotes to the widest dtype, exactly) and
    one cast, two kernels however many layers there are (on a GPU each launch
    costs microseconds, and a ResNet has dozens of parameter tensors).
    """
    if all(v.device == device for v in values):
        return torch.stack(values).to(torch.float64)
    return torch.stack([v.to(device=device, dtype=torch.float64) for v in values])


def _first_tensor(args: Iterable[Any]) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _bad(value: float) -> str | None:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


class Probe:
    """Hooks that measure K_z, K_a, ||y||, m, w_max and the gradient maxima.

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
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, sync_distributed: bool = True):
        self.model = model
        self.layer_name, self.layer = find_last_linear(model, layer)
        self.sync_distributed = sync_distributed
        # parameters in a fixed order, with the owning module of each
        self._params: list[tuple[str, nn.Parameter]] = []
        self._owner: list[str] = []
        seen: set[int] = set()
        for mod_name, mod in model.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                if p.requires_grad and id(p) not in seen:   # a tied weight counts once
                    seen.add(id(p))
                    self._params.append((f"{mod_name}.{p_name}" if mod_name else p_name, p))
                    self._owner.append(mod_name or "(root)")
        last_ids = {id(p) for p in self.layer.parameters()}
        self._is_last = [id(p) in last_ids for _, p in self._params]
        self.epoch_max: dict[str, float] = {}
        self.last: dict[str, Any] | None = None  # the last read()
        self.reads = 0
        self._measuring = False
        self._w_snap: torch.Tensor | None = None
        self._clear_step()
        self._handle = self.layer.register_forward_hook(self._on_forward, with_kwargs=True)

    # -- hooks ---------------------------------------------------------------
    def _clear_step(self) -> None:
        # 0-d tensors of the step being measured (None: nothing seen yet)
        self._frob_sq: torch.Tensor | None = None
        self._max_abs: torch.Tensor | None = None
        self._K_a_sq: torch.Tensor | None = None
        self._y_sq: torch.Tensor | None = None
        self._m = 0

    @staticmethod
    def _add(old, new):
        return new if old is None else old + new

    @staticmethod
    def _max(old, new):
        return new if old is None else torch.maximum(old, new)

    def _on_forward(self, module, args, kwargs, output) -> None:
        if not (torch.is_grad_enabled() or self._measuring):
            return  # a validation forward: not part of the training step
        a = _first_tensor(args) if args else _first_tensor(kwargs.values())
        out = output if isinstance(output, torch.Tensor) else _first_tensor(output)
        if a is None:
            return
        with torch.no_grad():
            a = a.detach()
            acc = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else None
            frob = torch.linalg.vector_norm(a, dtype=acc).double()   # K_z^2 would overflow float32 at 1.8e19
            self._frob_sq = self._add(self._frob_sq, frob * frob)
            self._max_abs = self._max(self._max_abs, torch.linalg.vector_norm(a, ord=math.inf, dtype=acc))
            if out is not None:
                K_a = torch.linalg.vector_norm(out.detach(), dtype=acc).double()
                self._K_a_sq = self._add(self._K_a_sq, K_a * K_a)
            self._m += a.shape[0] if a.dim() > 0 else 1

    def observe_targets(self, y: torch.Tensor) -> None:
        """Record ``||y||_2`` of this step's targets (needed by mse)."""
        with torch.no_grad():
            n = torch.linalg.vector_norm(y.detach().float()).double()
            self._y_sq = self._add(self._y_sq, n * n)

    # -- reading -------------------------------------------------------------
    def has_batch(self) -> bool:
        """True when a training forward was measured since the last read."""
        return self._frob_sq is not None

    def _grad_maxima(self) -> tuple[list[int], list[torch.Tensor]]:
        idx = [i for i, (_, p) in enumerate(self._params) if p.grad is not None]
        grads = [self._params[i][1].grad.detach() for i in idx]
        return idx, (list(torch._foreach_norm(grads, math.inf)) if grads else [])

    def _w_max_tensor(self) -> torch.Tensor | None:
        weights = [p.detach() for _, p in self._params]
        if not weights:
            return None
        return torch.stack([n.float() for n in torch._foreach_norm(weights)]).max()

    def snapshot_w_max(self) -> None:
        """Take max ‖w‖ now (no sync), for the next :meth:`read`: the scheduler
        calls it just before ``optimizer.step()``, so that w_max belongs to the
        weights that produced the step's gradient."""
        self._w_snap = self._w_max_tensor()

    def w_max(self) -> float:
        """max ‖w‖ over single parameter tensors (biases and BatchNorm included); syncs."""
        w = self._w_max_tensor()
        return 0.0 if w is None else float(w)

    def read(self, step: int | None = None, *, strict: bool = True) -> dict[str, Any] | None:
        """The step's statistics as plain Python numbers, or None without a forward.

        One device sync.  Call it after ``backward()`` and before
        ``zero_grad()``.  NaN/inf raises :class:`DivergenceError`; with
        ``strict=False`` the message is returned in ``stats["nonfinite"]``
        instead (for a step that AMP's GradScaler skips).
        """
        if self._frob_sq is None:
            return None
        step = self.reads if step is None else step
        has_y = self._y_sq is not None
        has_K_a = self._K_a_sq is not None
        ref = self._frob_sq
        zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
        sums = [self._frob_sq, self._K_a_sq if has_K_a else zero, self._y_sq if has_y else zero]
        idx, g = self._grad_maxima()
        w = self._w_snap if self._w_snap is not None else self._w_max_tensor()
        self._w_snap = None
        maxes = [self._max_abs, w if w is not None else zero, *g]
        m = self._m
        self._clear_step()
        S = _float64_vector(sums, ref.device)
        M = _float64_vector(maxes, ref.device)
        if self.sync_distributed and distributed.is_distributed():
            S = torch.cat([S, torch.tensor([float(m)], dtype=torch.float64, device=S.device)])
            distributed.all_reduce_sum_max(S, M)
            values = torch.cat([S, M]).tolist()
            m = int(round(values.pop(3)))
        else:
            values = torch.cat([S, M]).tolist()
        frob_sq, K_a_sq, y_sq, max_abs, w_max, *g_vals = values
        bad = self._nonfinite(f"step {step}", frob_sq, max_abs, K_a_sq if has_K_a else 0.0,
                              y_sq if has_y else 0.0, w_max, [(self._params[i][0], v) for i, v in zip(idx, g_vals)])
        if bad and strict:
            raise DivergenceError(bad)
        grad_layers: dict[str, float] = {}
        grad_last = None
        for i, v in zip(idx, g_vals):
            owner = self._owner[i]
            grad_layers[owner] = max(grad_layers.get(owner, 0.0), v)
            if self._is_last[i]:
                grad_last = v if grad_last is None else max(grad_last, v)
        stats = {
            "m": m,
            "K_z_frobenius": math.sqrt(frob_sq),
            "K_z_max_abs": max_abs,
            "K_a": math.sqrt(K_a_sq) if has_K_a else None,
            "y_norm": math.sqrt(y_sq) if has_y else None,
            "w_max": w_max,
            "grad_last": grad_last,
            "grad_layers": grad_layers,
            "nonfinite": bad,
        }
        if not bad:
            self._update_epoch_max(stats)
        self.reads += 1
        self.last = stats
        return stats

    def _nonfinite(self, label, frob_sq, max_abs, K_a_sq, y_sq, w_max, grads) -> str | None:
        """The first NaN/inf quantity, in the order the step computes them, as a message."""
        for name, value, what in (("K_z", frob_sq, f"activations of layer {self.layer_name!r}"),
                                  ("K_z", max_abs, f"activations of layer {self.layer_name!r}"),
                                  ("K_a", K_a_sq, f"output of layer {self.layer_name!r}"),
                                  ("y_norm", y_sq, "targets")):
            bad = _bad(value)
            if bad:
                return f"{label}: {name} is {bad} ({what})"
        for p_name, value in grads:   # before w_max: an inf gradient is the cause of inf weights
            bad = _bad(value)
            if bad:
                return f"{label}: gradient of {p_name!r} is {bad}"
        bad = _bad(w_max)
        return f"{label}: w_max is {bad} (weights)" if bad else None

    def _update_epoch_max(self, stats: dict[str, Any]) -> None:
        for key in EPOCH_KEYS:
            v = stats.get(key)
            if v is not None:
                self.epoch_max[key] = max(self.epoch_max.get(key, v), v)

    def reset_epoch(self) -> dict[str, float]:
        """Start a new epoch's running maxima; returns the finished epoch's."""
        done, self.epoch_max = self.epoch_max, {}
        return done

    # -- the authors' extra pass ---------------------------------------------
    def measure(self, loader: Iterable, *, device: torch.device | str | None = None,
                label: str = "measurement") -> dict[str, Any]:
        """The authors' protocol: one pass over ``loader`` in eval mode under
        ``torch.no_grad()``; returns the maxima over batches of K_z (both
        definitions), K_a and ||y|| (batches ``(x, y)`` or ``x``), and m, the
        largest batch.  Give a loader in fixed order without augmentation."""
        if device is None:
            first = next(self.model.parameters(), None)
            device = first.device if first is not None else "cpu"
        saved = (self._frob_sq, self._max_abs, self._K_a_sq, self._y_sq, self._m)
        was_training = self.model.training
        rows_sum: list[torch.Tensor] = []
        rows_max: list[torch.Tensor] = []
        saw_y = False
        self._measuring = True
        self.model.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
                    self._clear_step()
                    if y is not None and torch.is_floating_point(y):
                        self.observe_targets(y)
                        saw_y = True
                    self.model(x.to(device))
                    if self._frob_sq is None:
                        raise RuntimeError(f"the forward never reached layer {self.layer_name!r}")
                    z = torch.zeros((), dtype=torch.float64, device=self._frob_sq.device)
                    rows_sum.append(torch.stack([t.double() if t is not None else z for t in (
                        self._frob_sq, self._K_a_sq, self._y_sq)] + [z + self._m]))
                    rows_max.append(self._max_abs.double().reshape(1))
        finally:
            self._measuring = False
            self.model.train(was_training)
            self._frob_sq, self._max_abs, self._K_a_sq, self._y_sq, self._m = saved
        if not rows_sum:
            raise ValueError("loader is empty")
        S, M = torch.stack(rows_sum), torch.stack(rows_max)
        if self.sync_distributed and distributed.is_distributed():
            distributed.check_same_length(len(rows_sum))
            distributed.all_reduce_sum_max(S, M)   # per batch: the union over ranks
        frob_sq, K_a_sq, y_sq, m = S.max(dim=0).values.tolist()
        max_abs = M.max().item()
        bad = self._nonfinite(f"{label} (eval mode)", frob_sq, max_abs, K_a_sq, y_sq, 0.0, [])
        if bad:
            raise DivergenceError(bad)
        return {"m": int(round(m)), "K_z_frobenius": math.sqrt(frob_sq), "K_z_max_abs": max_abs,
                "K_a": math.sqrt(K_a_sq), "y_norm": math.sqrt(y_sq) if saw_y else None,
                "batches": len(rows_sum)}

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
