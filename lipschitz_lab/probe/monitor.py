r"""CurvatureMonitor: the curvature instruments in a training loop, every ``every`` steps.

On a measured step the monitor

1. keeps the step's input and the RNG state just before its forward (a forward pre-hook on
   the model; the step's dropout masks are replayed from it) and, through :meth:`wrap_loss`
   or :meth:`observe`, its target;
2. just before ``optimizer.step()`` (an optimizer step pre-hook), at the weights behind the
   gradient: snapshots them, builds the batch loss's Hessian there
   (:func:`~lipschitz_lab.probe.hessian.hessian_at`) and measures λ_max (:class:`Sharpness`);
3. in :meth:`step`, after the update: Δw = w_{t+1} − w_t, and dir_curv and α along it
   (:class:`StepQuality`, from the same Hessian), and edge = lr·(λ_max + λ).

:meth:`step` returns the step's :data:`~lipschitz_lab.probe.curvature.CURVATURE` vector
(float64, on the device; None on a step not measured); :attr:`last` keeps the tensors a rule
needs (``lambda_max``, ``slope``, ``curv``, ``lr``).  Nothing waits for the device.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lipschitz_lab.probe.curvature import CURVATURE, Sharpness, StepQuality, edge, edge_limit
from lipschitz_lab.probe.hessian import capture_rng, hessian_at
from lipschitz_lab.probe.params import trainable_parameters

__all__ = ["CurvatureMonitor"]


class CurvatureMonitor:
    r"""λ_max, edge, dir_curv and α of a training loop, measured every ``every`` steps.

    The loop::

        mon = CurvatureMonitor(model, opt, criterion, every=10)
        crit = mon.wrap_loss(criterion)           # keeps the target
        for x, y in loader:
            loss = crit(model(x), y); loss.backward()
            opt.step()                            # the pre-hook measures λ_max here
            vec = mon.step()                      # dir_curv, α; the step's vector, or None
            opt.zero_grad()

    ``criterion(output, target)`` (a half-precision output in float32) is the batch loss; give
    ``loss_of(output, target)`` for another.  Pass the bare model (not a DDP or
    ``torch.compile`` wrapper): the Hessian is each rank's own batch's, without autocast.  With
    gradient accumulation the last micro-batch before the step is measured.  ``quality=False``
    skips dir_curv and α (one product less).  ``hook=False``: no forward pre-hook on the model
    (a compiled model's forward would break its graph on it); give the input to :meth:`observe`
    instead.  ``rows=r`` measures on the batch's first r rows
    only: cheaper, but the Hessian of a smaller batch's loss (noisier, λ_max biased up; BatchNorm
    normalises with those rows); benchmarks/RESULTS.md gives both the cost and the bias.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 criterion: Callable | None = None, *,
                 every: int = 10, iters: int = 5, cold_iters: int = 20, quality: bool = True,
                 rows: int | None = None, loss_of: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
                 mute_hooks: bool = True, hook: bool = True, optimizer_hook: bool = True):
        if loss_of is None:
            if criterion is None:
                raise ValueError("criterion=None and loss_of=None: the monitor needs the batch loss")
            loss_of = lambda out, target: criterion(*_as_the_loss_sees(_full(out), target))   # noqa: E731
        self.model, self.optimizer, self.loss_of = model, optimizer, loss_of
        self.sharpness = Sharpness(every, iters, cold_iters)
        self.quality = StepQuality() if quality else None
        self.mute_hooks = mute_hooks
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ValueError(f"rows must be an integer >= 1 or None; got rows={rows!r}")
        self.rows = rows
        group = optimizer.param_groups[0]
        self.limit = edge_limit(float(group.get("momentum", 0.0) or 0.0), bool(group.get("nesterov", False)))
        self.index = 0                        # the monitor's step count (calls of step())
        self.last: dict[str, torch.Tensor] = {}
        self._batch: tuple | None = None      # (args, kwargs, rng) of the step's forward
        self._target: Any = None
        self._pending: dict[str, Any] | None = None   # what the pre-hook measured, for step()
        self._handles = [optimizer.register_step_pre_hook(self._before_update)] if optimizer_hook else []
        if hook:
            self._handles.append(model.register_forward_pre_hook(self._keep_input, with_kwargs=True))

    # -- what the loop gives ----------------------------------------------------------------
    def observe(self, target: Any, inputs: Any = None, kwargs: dict[str, Any] | None = None) -> None:
        """This step's target (once per step, if not through :meth:`wrap_loss`).  With
        ``hook=False`` also its ``inputs`` (a tensor or a tuple of the forward's arguments):
        call it right before the forward, so the RNG state kept is the one its dropout draws from."""
        if not self.sharpness.due(self.index):
            return
        self._target = target
        if inputs is not None:
            args = inputs if isinstance(inputs, tuple) else (inputs,)
            self._keep_input(self.model, args, dict(kwargs or {}))

    @property
    def lambda_now(self) -> torch.Tensor | None:
        """λ_max of the step in progress, once the optimizer's pre-hook has measured it (between
        its ``optimizer.step()`` and :meth:`step`; None on a step not measured): a rule that sets
        this very step's rate (a warm start) reads it from a pre-hook registered after the monitor's."""
        return None if self._pending is None else self._pending["lambda_max"]

    def wrap_loss(self, criterion: Callable) -> Callable:
        """``criterion`` that also hands the monitor its target."""
        def loss_fn(output, target, *args, **kwargs):
            self.observe(target)
            return criterion(output, target, *args, **kwargs)
        return loss_fn

    def _keep_input(self, module, args, kwargs):
        if self.sharpness.due(self.index) and torch.is_grad_enabled():
            device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
            self._batch = (args, kwargs, capture_rng(device))

    # -- measuring --------------------------------------------------------------------------
    def before_update(self) -> torch.Tensor | None:
        """Measure λ_max now, at the weights behind the gradient (what the optimizer pre-hook does;
        an owner built with ``optimizer_hook=False`` calls it first thing in its own pre-hook).
        Returns λ_max (a float64 0-d device tensor), or None on a step not measured."""
        self._before_update(self.optimizer, (), {})
        return self.lambda_now

    def _before_update(self, optimizer, args, kwargs) -> None:
        if self._batch is None or self._target is None:
            return
        (inputs, kw, rng), target = self._batch, self._target
        if self.rows is not None:
            inputs, target = tuple(_head(a, self.rows) for a in inputs), _head(target, self.rows)
        names, params, _ = trainable_parameters(self.model)
        weights = {n: p.detach().clone() for n, p in zip(names, params)}
        hvp = hessian_at(self.model, tuple(inputs), lambda out: self.loss_of(out, target), weights=weights,
                         rng=rng, kwargs=kw, mute_hooks=self.mute_hooks)
        group = optimizer.param_groups[0]
        lr = group.get("lr", float("nan"))          # AGD's groups carry no lr: its η is its own
        lr = lr.detach().clone() if isinstance(lr, torch.Tensor) else float(lr)
        self._pending = {"hvp": hvp, "before": list(weights.values()), "params": params,
                         "lambda_max": self.sharpness.measure(hvp), "lr": lr,
                         "weight_decay": float(group.get("weight_decay", 0.0) or 0.0)}

    def step(self) -> torch.Tensor | None:
        """Close the step (after ``optimizer.step()``): the step's CURVATURE vector, or None."""
        pending, self._pending, self._batch, self._target = self._pending, None, None, None
        self.index += 1
        if pending is None:
            return None
        lam = pending["lambda_max"]
        out = {"lambda_max": lam, "edge": edge(pending["lr"], lam, pending["weight_decay"]),
               "dir_curv": torch.full_like(lam, torch.nan), "alpha": torch.full_like(lam, torch.nan)}
        if self.quality is not None:
            with torch.no_grad():
                update = [p.detach() - w for p, w in zip(pending["params"], pending["before"])]
            q = self.quality.measure(pending["hvp"], update)
            out.update(dir_curv=q["dir_curv"], alpha=q["alpha"])
            self.last = {"slope": q["slope"], "curv": q["curv"]}
        else:
            self.last = {}
        self.last.update(lambda_max=lam, lr=torch.as_tensor(pending["lr"], dtype=torch.float64,
                                                            device=lam.device))
        return CURVATURE.pack(out, device=lam.device)

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "sharpness": self.sharpness.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])
        self.sharpness.load_state_dict(state["sharpness"])


def _full(out: torch.Tensor) -> torch.Tensor:
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def _as_the_loss_sees(out: torch.Tensor, target: Any) -> tuple[torch.Tensor, Any]:
    """A sequence model's (B, T, V) logits flattened to (B·T, V), with the targets to (B·T): the
    shapes ``cross_entropy`` takes (the trainer flattens them so; a loop may give them either way)."""
    if isinstance(target, torch.Tensor) and out.dim() == 3 and not target.is_floating_point() \
            and target.numel() == out.shape[0] * out.shape[1]:
        return out.reshape(-1, out.shape[-1]), target.reshape(-1)
    return out, target


def _head(a: Any, rows: int) -> Any:
    return a[:rows] if isinstance(a, torch.Tensor) and a.dim() > 0 else a
