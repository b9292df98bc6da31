r"""LipschitzLR's states and transitions, in the one object that owns them (docs/architecture.md).

=============  ==========================================================  =============
state          what is in force                                            next
=============  ==========================================================  =============
``unset``      no rate yet                                                 ``from_batch``
``from_batch`` the warm-start rate, from the batch being stepped           ``set``
``set``        a rate; step mode renews it every step, epoch mode at       ``frozen``
               ``epoch_end()``, the exact protocol at each measurement
``frozen``     the rate after ``fixed_after`` epochs, never renewed        --
=============  ==========================================================  =============

One step: a training forward (the probe's hook measures) → ``optimizer.step()``
(its pre-hook calls :meth:`RateState.before_optimizer_step`: max‖w‖ of the weights
behind the gradient and, in ``unset``, the warm-start rate from this very batch →
``from_batch``) → ``scheduler.step()`` (:meth:`RateState.step`: queues the record; in
``set`` with ``recompute="step"`` the batch sets the next rate; ``from_batch`` → ``set``:
the batch that set the rate does not set it twice).  A ``scheduler.step()`` whose
``optimizer.step()`` never ran (AMP's GradScaler skipped an overflow) is not measured.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from lipschitz_lab.bounds import CLAMPS
from lipschitz_lab.probe import Probe, StepStats
from lipschitz_lab.scheduler.options import CURVATURE_BOUNDS
from lipschitz_lab.scheduler.rate import RATE, RateWriter, device_of
from lipschitz_lab.scheduler.record import StepDecoder
from lipschitz_lab.scheduler.rule import RateRule
from lipschitz_lab.steplog import StepLog

__all__ = ["RateState", "STATES", "is_check_step"]

#: the rate's states, in the order a run meets them
STATES = ("unset", "from_batch", "set", "frozen")
#: the loss-scale check runs on the first CHECK_FIRST steps, then every CHECK_EVERY steps
CHECK_FIRST, CHECK_EVERY = 3, 50


def is_check_step(index: int) -> bool:
    return index < CHECK_FIRST or index % CHECK_EVERY == 0


class RateState:
    """The rate in force, where it came from, and how a step, an epoch's end or a measurement
    changes it.  LipschitzLR owns one; nothing else writes it."""

    def __init__(self, rule: RateRule, probe: Probe, optimizer: torch.optim.Optimizer, log: StepLog, *,
                 recompute: str, fixed_after: int | None, layerwise=None, group_layer=None,
                 skipped: Callable[[], bool] | None = None, warn: Callable[[str, str], None]):
        self.rule, self.probe, self.optimizer, self.log = rule, probe, optimizer, log
        self.recompute, self.fixed_after = recompute, fixed_after
        self.layerwise, self.group_layer = layerwise, group_layer
        self.writer = RateWriter(optimizer)
        self.skipped, self.warn = skipped, warn
        self.name = "unset"
        self.rate: torch.Tensor | None = None          # laid out by RATE, float64, on the device
        self.info: dict[str, Any] = {"kz_mode": None, "source": None}
        self.layer_betas: torch.Tensor | None = None   # layer-wise: β per layer of the rate in force
        self.pending: StepStats | None = None          # the batch read early, at the warm start
        self.stepped = False                           # optimizer.step() ran since the last step()
        self.step_index, self.epoch = 0, 0
        self.monitor = None                            # the curvature instruments (sharpness_every)
        self.arm_check(0)

    # -- the rate -------------------------------------------------------------------------
    def lam(self) -> float:
        """λ: the largest weight decay of the param groups."""
        return max(float(g.get("weight_decay", 0.0) or 0.0) for g in self.optimizer.param_groups)

    def set_rate(self, stats: dict[str, Any], w_max, kz_mode: str, source: str) -> None:
        """The rate from statistics (device tensors or floats), written into the optimizer."""
        self.info = {"kz_mode": kz_mode, "source": source}
        if self.layerwise is not None:
            self.rate, rates, self.layer_betas = self.rule.layer_vector(
                stats, self.layerwise.betas(), self.group_layer, self.lam())
            self.writer.write_groups(rates)
            return
        self.rate = self.rule.vector(stats, w_max, self.lam(), device_of(self.optimizer))
        self.writer.write(RATE.get(self.rate, "lr"), changed=True)

    def arm_check(self, index: int) -> None:
        if self.probe.scale_check is not None:
            self.probe.scale_check.armed = is_check_step(index)

    # -- the transitions ------------------------------------------------------------------
    def before_optimizer_step(self) -> None:
        """The optimizer's pre-hook: λ_max (a measured step) and w_max now, at the weights behind the
        gradient; then, once, the warm start from this batch (a curvature rule: from its λ_max)."""
        self.stepped = True
        lambda_max = self.monitor.before_update() if self.monitor is not None else None
        self.probe.snapshot_w_max()
        if self.rule.bound in CURVATURE_BOUNDS:
            self._curvature_rate(lambda_max)
            return
        if self.name != "unset":
            if self.rate is not None and self.layerwise is None:
                self.writer.write(RATE.get(self.rate, "lr"), changed=False)   # a changed lr_scale
            return
        if self.pending is None and self.probe.has_batch():
            self.pending = self.probe.read_device()
            self._warm_start(self.pending)

    def _curvature_rate(self, lambda_max) -> None:
        """curvature: c(1+μ)/λ_max from this step's Hessian, for this very update; directional: its
        first rate the same way (then it follows the steps taken, in :meth:`step`)."""
        if lambda_max is not None and (self.rule.bound == "curvature" or self.name == "unset"):
            self.info = {"kz_mode": None, "source": "curvature"}
            self.rate = self.rule.curvature_vector(lambda_max, self.lam(), self.rate)
            self.writer.write(RATE.get(self.rate, "lr"), changed=True)
            self.name = "from_batch" if self.name == "unset" else self.name
        elif self.rate is not None:
            self.writer.write(RATE.get(self.rate, "lr"), changed=False)   # a changed lr_scale

    def _warm_start(self, stats: StepStats) -> None:
        self.set_rate(stats.bound_inputs(self.rule.kz), stats["w_max"], "train", "warm start")
        self.name = "from_batch"

    def _read(self) -> StepStats | None:
        """This step's statistics, or None when there is nothing to measure."""
        stepped, self.stepped = self.stepped, False
        if self.pending is not None:
            stats, self.pending = self.pending, None
            return stats
        if not self.probe.has_batch():
            self.warn("forward", "scheduler.step() without a measured training forward; rate unchanged")
            return None
        if stepped:
            return self.probe.read_device()
        if self.skipped is not None and self.skipped():    # the GradScaler says it skipped: no sync
            self.probe.read_device(update_epoch=False)
            self.warn("skip", "optimizer.step() was skipped (GradScaler found inf or NaN): "
                      "the step is not measured")
            return None
        stats = self.probe.read_device(update_epoch=False)          # optimizer.step() did not run: read now
        plain = self.probe.decode(stats, stats.values.tolist(), self.step_index)
        if plain["nonfinite"]:
            self.warn("skip", f"{plain['nonfinite']}, and optimizer.step() was skipped (GradScaler?): "
                      "the step is not measured")
            return None
        self.probe.epoch.update(stats)
        return stats

    def step(self) -> None:
        """``scheduler.step()``: measure, queue the record, renew the rate in step mode."""
        stats = self._read()
        self.arm_check(self.step_index + (stats is not None))
        if stats is None:
            if self.monitor is not None:
                self.monitor.step()            # a step not measured: the monitor's count moves on
            return
        self._check_inputs(stats)
        scale = float(self.optimizer.param_groups[0].get("lr_scale", 1.0))   # the rate group 0 really used
        curvature = self.rule.bound in CURVATURE_BOUNDS
        if self.name == "unset":
            # the pre-hook saw no batch (optimizer.step(closure) runs the forward inside the step, as
            # Lightning does; a curvature rule before its first measurement): this update used the
            # optimizer's own lr; this batch sets the next rate
            used, info = self._rate_in_group(scale), {"kz_mode": None, "source": "optimizer's lr"}
            if not curvature:
                self._warm_start(stats)
        else:
            used, info = self.rate, dict(self.info)
        lam = self.lam()
        if self.recompute == "step" and self.name == "set" and not curvature:
            self.set_rate(stats.bound_inputs(self.rule.kz), stats["w_max"], "train", "step")
        curv = self._measured_curvature(used, scale, lam)
        if self.name == "from_batch":
            self.name = "set"
        decoder = StepDecoder(self.rule, self.probe, stats, step=self.step_index, epoch=self.epoch,
                              scale=scale, lam=lam, info=info, warn=self.warn, curvature=curv is not None,
                              layer_names=self.layerwise.names if self.layerwise else None,
                              edge_limit=self.monitor.limit if self.monitor is not None else None)
        betas = [self.layer_betas] if self.layer_betas is not None else []
        lr_next = (RATE.get(self.rate, "lr") if self.rate is not None else RATE.get(used, "lr")).reshape(1)
        tensors = [used, stats.values, lr_next, *betas, *([curv] if curv is not None else [])]
        self.log.contribute("schedule", tensors, decoder, step=self.step_index, epoch=self.epoch)
        self.step_index += 1

    def _measured_curvature(self, used: torch.Tensor, scale: float, lam: float) -> torch.Tensor | None:
        """The monitor's vector of this step (None: not measured); the directional rule's next rate."""
        if self.monitor is None:
            if self.rule.bound in CURVATURE_BOUNDS:
                raise ValueError(f"bound={self.rule.bound!r} measures the Hessian of your loss: build the "
                                 "criterion with sched.wrap_loss(criterion) (it keeps the batch it needs)")
            return None
        curv = self.monitor.step()
        if curv is not None and self.rule.bound == "directional" and "slope" in self.monitor.last:
            last = {**self.monitor.last, "lr": RATE.get(used, "lr") * scale}     # the rate this update used
            self.rate = self.rule.directional_vector(last, lam)
            self.info = {"kz_mode": None, "source": "directional"}
            self.writer.write(RATE.get(self.rate, "lr"), changed=True)
        return curv

    def _check_inputs(self, stats: StepStats) -> None:
        if "y_norm" in self.rule.needs and not stats.has_y:
            raise ValueError(f"y_norm is required for loss={self.rule.loss!r}: call scheduler.observe(y) "
                             "each step or use scheduler.wrap_loss(criterion)")
        if not any(self.probe.is_last[i] for i in stats.grad_index) and "own_grad" not in stats.layout:
            self.warn("grad", "no gradients at scheduler.step(): call it before optimizer.zero_grad()")

    def _rate_in_group(self, scale: float) -> torch.Tensor:
        """The rate group 0 holds, as a rate vector (lr / lr_scale; nothing set it)."""
        lr = self.optimizer.param_groups[0]["lr"]
        lr = lr.detach().to(torch.float64) if isinstance(lr, torch.Tensor) else torch.tensor(
            float(lr), dtype=torch.float64)
        nan = torch.full_like(lr, float("nan"))
        return RATE.pack({"lr": lr / scale, "K_z": nan, "L": nan, "code": torch.zeros_like(lr)},
                         device=lr.device)

    def epoch_end(self, loader: Iterable | None, exact_protocol: bool) -> None:
        """Close the epoch: the epoch rate (recompute="epoch"), then the freeze of ``fixed_after``."""
        values, flags = self.probe.epoch.take()
        self.epoch += 1
        if self.name == "frozen":
            return
        if self.recompute == "epoch":
            if exact_protocol:                 # without a loader the trainer calls measure_epoch()
                if loader is not None:
                    self.measure(loader)
            elif values is not None:
                stats = self.probe.epoch.bound_inputs(values, flags, self.rule.kz)
                self.set_rate(stats, self.probe.w_max_device(), "train", "epoch")
                self.name = "set"
        if self.fixed_after is not None and self.epoch >= self.fixed_after and self.rate is not None:
            self.name = "frozen"

    def measure(self, loader: Iterable) -> dict[str, Any]:
        """The exact protocol's eval pass sets the rate (state ``set``); returns what it measured."""
        if loader is None:
            raise ValueError("loader is required for measure_epoch (or give loader= to LipschitzLR)")
        stats = self.probe.measure(loader, label=f"epoch {self.epoch} measurement")
        w_max = self.probe.w_max()
        self.set_rate(stats, w_max, "eval", "exact protocol")
        self.name = "set"
        rate = RATE.unpack(self.rate.tolist())
        return {**stats, "w_max": w_max, "lr": rate["lr"], "K_z": rate["K_z"], "L": rate["L"],
                "clamped": CLAMPS[int(rate["code"])], **self.info}

    # -- a checkpoint's share -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only (syncs)."""
        return {"epoch": self.epoch, "step_index": self.step_index, "state": self.name,
                "rate": None if self.rate is None else self.rate.tolist(), "rate_info": dict(self.info),
                "ema": {k: float(v) if isinstance(v, torch.Tensor) else v
                        for k, v in self.rule.ema.state_dict().items()},
                "probe": self.probe.state_dict(),
                "layerwise": None if self.layerwise is None else self.layerwise.state_dict(),
                "monitor": None if self.monitor is None else self.monitor.state_dict(),
                "directional": None if self.rule.directional is None else self.rule.directional.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.epoch, self.step_index, self.name = state["epoch"], state["step_index"], state["state"]
        self.info = dict(state["rate_info"])
        self.rule.ema.load_state_dict(state["ema"])
        self.probe.load_state_dict(state["probe"], device)
        if state.get("layerwise") is not None and self.layerwise is not None:
            self.layerwise.load_state_dict(state["layerwise"], device)
        if state.get("monitor") is not None and self.monitor is not None:
            self.monitor.load_state_dict(state["monitor"])
        if state.get("directional") is not None and self.rule.directional is not None:
            self.rule.directional.load_state_dict(state["directional"])
        rate = state["rate"]
        self.rate = None if rate is None else torch.tensor(rate, dtype=torch.float64, device=device)
        self.arm_check(self.step_index)
        self.writer.to_device(device)
        if self.rate is not None and self.layerwise is None:
            self.writer.write(RATE.get(self.rate, "lr"), changed=True)
