r"""LipschitzLR's states and transitions (the diagram is in docs/architecture.md).

The rate's state, ``sched.state``:

=============  ==========================================================  =============
state          what is in force                                            next
=============  ==========================================================  =============
``unset``      no rate yet                                                 ``from_batch``
``from_batch`` the warm-start rate, from the batch being stepped           ``set``
``set``        a rate; step mode renews it every step, epoch mode at       ``frozen``
               :meth:`epoch_end`, the exact protocol at each measurement
``frozen``     the rate after ``fixed_after`` epochs, never renewed        --
=============  ==========================================================  =============

One step: a training forward (the probe's hook measures) → ``optimizer.step()``
(its pre-hook snapshots max‖w‖ and, in ``unset``, reads the batch early and
sets the warm-start rate → ``from_batch``) → ``scheduler.step()`` (queues the
record; in ``set`` with ``recompute="step"`` the batch sets the next rate;
``from_batch`` → ``set``: the batch that set the rate does not set it twice).
A ``scheduler.step()`` whose ``optimizer.step()`` never ran (AMP's GradScaler
skipped an overflow) is read at once; if a number is NaN or inf the step is
not measured.
"""
from __future__ import annotations

from typing import Any

import torch

from lipschitz_lab.bounds import smoothness_bound
from lipschitz_lab.scheduler.rate import CLAMPS, clamp_rate, write_rate
from lipschitz_lab.scheduler.record import StepDecoder

__all__ = ["CHECK_EVERY", "step", "epoch_end", "rate_vector", "device_stats", "state_dict", "load_state_dict"]

#: the loss-scale check runs on the first CHECK_FIRST steps, then every CHECK_EVERY steps
CHECK_FIRST, CHECK_EVERY = 3, 50


def is_check_step(index: int) -> bool:
    return index < CHECK_FIRST or index % CHECK_EVERY == 0


# -- statistics as the rate reads them ---------------------------------------------------
def device_stats(stats, kz: str) -> dict[str, Any]:
    """A StepStats as the 0-d device tensors the bounds take (only those this run needs)."""
    v = stats.values
    out = {"m": v[3], f"K_z_{kz}": stats.K_z(kz), "K_a": v[1].sqrt() if stats.has_K_a else None,
           "y_norm": v[2].sqrt() if stats.has_y else None,
           "sigma_max": v[4].sqrt() if stats.has_sigma else None}
    return out


def epoch_stats(values: torch.Tensor, flags: tuple[bool, bool], kz: str) -> dict[str, Any]:
    """An epoch's running maxima (LAYOUT[:6] on the device) as the bounds take them."""
    K_z = values[0].sqrt() if kz == "frobenius" else values[5]
    return {"m": values[3], f"K_z_{kz}": K_z, "K_a": values[1].sqrt() if flags[0] else None,
            "y_norm": values[2].sqrt() if flags[1] else None, "sigma_max": values[4].sqrt()}


def _tensor(x, device) -> torch.Tensor:
    return x.to(torch.float64) if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64,
                                                                                 device=device)


def rate_vector(s, stats: dict[str, Any], w_max, lam: float) -> torch.Tensor:
    """``[lr, K_z, L, clamp code]`` (float64, on the device) from statistics, tensors or floats.

    L is the bound that set the rate (β for ``bound="smooth"``); lr = 1/D with D = L for plain
    SGD, the EMA's denominator for the follow-up paper's optimizers, β/c for smooth."""
    device = next((p.device for g in s.optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    K_z = _tensor(stats[f"K_z_{s.kz}"], device)
    if s.bound == "smooth":
        if stats.get("sigma_max") is None:
            raise ValueError("bound='smooth' needs sigma_max; the probe did not measure it")
        S2 = smoothness_bound(s.loss, m=stats["m"], **{n: v for n, v in (("k", s.num_classes), ("eps", s.eps))
                                                       if n in s.needs})
        L = _tensor(s.loss_scale * S2 * stats["sigma_max"] * stats["sigma_max"] + lam, device)   # β
        D = L / s.smooth.c_eff(s.momentum)
    else:
        L = s.bound_value(s.bound, stats, lam, w_max)
        L_wd = L - s.bound_value(s.bound, stats, 0.0, 0.0) if lam and s.variant_optimizer in (
            "rmsprop", "adam") else 0.0
        D = _tensor(s._ema.update(L, L_wd), device)
    lr, code = clamp_rate(D, K_z, s.min_lr, s.max_lr)
    return torch.stack([lr, K_z.to(device), _tensor(L, device), code])


def layer_rates(s, stats: dict[str, Any], lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer-wise rule: (group 0's rate vector, every group's rate); keeps β per layer."""
    S2 = smoothness_bound(s.loss, m=stats["m"], **{n: v for n, v in (("k", s.num_classes), ("eps", s.eps))
                                                   if n in s.needs})
    betas = s.loss_scale * S2 * s.layerwise.betas() + lam
    s._betas = betas
    per_group = betas[s.group_layer] / s.smooth.c_eff(s.momentum)
    K_z = stats[f"K_z_{s.kz}"]
    lr, code = clamp_rate(per_group, K_z, s.min_lr, s.max_lr)
    return torch.stack([lr[0], K_z.to(lr.dtype), betas[s.group_layer[0]], code[0]]), lr


def measure(s, loader) -> dict[str, Any]:
    """The exact protocol's eval pass sets the rate (state ``set``); returns what it measured."""
    if loader is None:
        raise ValueError("loader is required for measure_epoch (or give loader= to LipschitzLR)")
    stats = s.probe.measure(loader, label=f"epoch {s.epoch} measurement")
    w_max = s.probe.w_max()
    s._set_rate(stats, w_max, "eval", "exact protocol")
    s.state = "set"
    lr, K_z, L, code = s._rate.tolist()
    return {**stats, "w_max": w_max, "lr": lr, "K_z": K_z, "L": L, "clamped": CLAMPS[int(code)], **s._rate_info}


# -- one step ------------------------------------------------------------------------------
def _rate_in_group(s, scale: float) -> torch.Tensor:
    """``[lr / lr_scale, nan, nan, 0]``: the rate group 0 holds, as a rate vector."""
    lr = s.optimizer.param_groups[0]["lr"]
    lr = lr.detach().to(torch.float64) if isinstance(lr, torch.Tensor) else torch.tensor(float(lr),
                                                                                         dtype=torch.float64)
    nan = torch.full_like(lr, float("nan"))
    return torch.stack([lr / scale, nan, nan, torch.zeros_like(lr)])


def _read(s):
    """This step's StepStats, or None when there is nothing to measure."""
    stepped, s._stepped = s._stepped, False
    if s._pending is not None:
        stats, s._pending = s._pending, None
        return stats
    if not s.probe.has_batch():
        s.warn_once("forward", "scheduler.step() without a measured training forward; rate unchanged")
        return None
    if stepped:
        return s.probe.read_device()
    stats = s.probe.read_device(update_epoch=False)          # optimizer.step() did not run: read now
    plain = s.probe.decode(stats, stats.values.tolist(), s.step_index)
    if plain["nonfinite"]:
        s.warn_once("skip", f"{plain['nonfinite']}, and optimizer.step() was skipped (GradScaler?): "
                    "the step is not measured")
        return None
    s.probe.update_epoch(stats)
    return stats


def step(s) -> None:
    """``scheduler.step()``: measure, queue the record, renew the rate in step mode."""
    s.last_epoch += 1
    s._step_count += 1
    stats = _read(s)
    s._check.armed = is_check_step(s.step_index + (stats is not None))
    if stats is None:
        return
    if "y_norm" in s.needs and not stats.has_y:
        raise ValueError(f"y_norm is required for loss={s.loss!r}: call scheduler.observe(y) "
                         "each step or use scheduler.wrap_loss(criterion)")
    if not any(s.probe.is_last[i] for i in stats.grad_index):
        s.warn_once("grad", "no gradients at scheduler.step(): call it before optimizer.zero_grad()")
    scale = float(s.optimizer.param_groups[0].get("lr_scale", 1.0))   # the rate group 0 really used
    if s.state == "unset":
        # the pre-hook saw no batch (optimizer.step(closure) runs the forward inside the step, as
        # Lightning does): this update used the optimizer's own lr; this batch sets the next rate
        used, info = _rate_in_group(s, scale), {"kz_mode": None, "source": "optimizer's lr"}
        s._warm_start(stats)
    else:
        used, info = s._rate, dict(s._rate_info)
    lam = s._lam()
    if s.recompute == "step" and s.state == "set":
        s._set_rate(device_stats(stats, s.kz), stats.values[6], "train", "step")
    if s.state == "from_batch":
        s.state = "set"
    decoder = StepDecoder(s, stats, step=s.step_index, epoch=s.epoch, scale=scale, lam=lam, info=info)
    own = not s.log.is_open
    if own:
        s.log.open(step=s.step_index, epoch=s.epoch)
    extra = [s._betas] if s.layerwise is not None and s._betas is not None else []
    s.log.add([used, stats.values, s._rate[:1], *extra], decoder)
    if own:
        s.log.close_entry()
    s.step_index += 1


def epoch_end(s) -> None:
    """Close the epoch: the epoch rate (recompute="epoch"), then the freeze of ``fixed_after``."""
    values, flags = s.probe.take_epoch_max()
    s.epoch += 1
    if s.state == "frozen":
        return
    if s.recompute == "epoch":
        if s.exact_protocol:                 # without a loader the trainer calls measure_epoch()
            if s.loader is not None:
                s.measure_epoch(s.loader)
        elif values is not None:
            s._set_rate(epoch_stats(values, flags, s.kz), s.probe.w_max_device(), "train", "epoch")
            s.state = "set"
    if s.fixed_after is not None and s.epoch >= s.fixed_after and s._rate is not None:
        s.state = "frozen"


# -- state ---------------------------------------------------------------------------------
def _config(s) -> dict[str, Any]:
    return {"loss": s.loss, "bound": s.bound, "kz": s.kz, "recompute": s.recompute, "fixed_after": s.fixed_after,
            "num_classes": s.num_classes, "eps": s.eps, "min_lr": s.min_lr, "max_lr": s.max_lr,
            "loss_scale": s.loss_scale, "exact_protocol": s.exact_protocol,
            "variant_optimizer": s.variant_optimizer, "layer": s.probe.layer_name}


def _plain(v):
    return float(v) if isinstance(v, torch.Tensor) else v


def state_dict(s) -> dict[str, Any]:
    power = s.probe._power
    return {"last_epoch": s.last_epoch, "_step_count": s._step_count,
            "base_lrs": [_plain(v) for v in s.base_lrs], "_last_lr": s.get_last_lr(),
            "epoch": s.epoch, "step_index": s.step_index, "state": s.state,
            "rate": None if s._rate is None else s._rate.tolist(), "rate_info": dict(s._rate_info),
            "epoch_max": s.probe.epoch_max_values(), "epoch_flags": list(s.probe._epoch_flags),
            "ema": {k: _plain(v) for k, v in s._ema.state_dict().items()},
            "power_v": None if power is None or power.v is None else power.v.tolist(),
            "config": _config(s)}


def load_state_dict(s, state: dict[str, Any]) -> None:
    import warnings
    differ = {k: v for k, v in state.get("config", {}).items() if _config(s).get(k) != v}
    if differ:
        warnings.warn(f"LipschitzLR state was saved with a different configuration: {differ}", stacklevel=3)
    s.last_epoch, s._step_count = state["last_epoch"], state["_step_count"]
    s.base_lrs, s._last_lr = list(state["base_lrs"]), list(state["_last_lr"])
    s.epoch, s.step_index, s.state = state["epoch"], state["step_index"], state["state"]
    s._rate_info = dict(state["rate_info"])
    s.probe.put_epoch_max(state["epoch_max"], tuple(state["epoch_flags"]))
    s._ema.load_state_dict(state["ema"])
    device = next((p.device for g in s.optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    if state.get("power_v") is not None and s.probe._power is not None:
        s.probe._power.v = torch.tensor(state["power_v"], dtype=torch.float64, device=device)
    if s.probe._epoch is not None:
        s.probe._epoch = s.probe._epoch.to(device)
    s._rate = None if state["rate"] is None else torch.tensor(state["rate"], dtype=torch.float64, device=device)
    s._check.armed = is_check_step(s.step_index)
    if s._rate is not None:
        write_rate(s.optimizer, s._rate[0], s.lr_mode)

