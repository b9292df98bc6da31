"""A LipschitzLR step record, decoded on the host from the numbers the step left on the device.

The step itself only keeps device tensors (the probe's vector, the rate in
force, the next rate); this module turns them into the plain record of
:mod:`lipschitz_lab.records` at the next flush: the bound in every variant
(through the generated functions, in Python floats), the smoothness β, the
clamp, the loss-scale verdict, and the divergence message if a number is NaN
or inf.
"""
from __future__ import annotations

import math
from typing import Any

from lipschitz_lab.bounds import VARIANTS
from lipschitz_lab.errors import LossScaleError
from lipschitz_lab.probe.scale import verdict
from lipschitz_lab.records import Record, step_record
from lipschitz_lab.scheduler.rate import CLAMPS

__all__ = ["StepDecoder"]


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


class StepDecoder:
    """``decode(record, host, values)`` for the StepLog: one per step, holding what the host knew."""

    __slots__ = ("sched", "stats", "step", "epoch", "scale", "lam", "info")

    def __init__(self, sched, stats, *, step: int, epoch: int, scale: float, lam: float, info: dict[str, Any]):
        self.sched, self.stats, self.step, self.epoch = sched, stats, step, epoch
        self.scale, self.lam, self.info = scale, lam, info

    def __call__(self, record: Record, host: dict[str, Any], values: list[float]) -> str | None:
        s = self.sched
        used, n = values[:4], self.stats.values.numel()
        stats = s.probe.decode(self.stats, values[4:4 + n], self.step)
        lr_next = values[4 + n]
        betas = values[5 + n:]
        if stats["nonfinite"]:
            return stats["nonfinite"]
        code = CLAMPS[int(used[3])]
        if code is not None and code.startswith("error"):
            raise ValueError(f"step {self.step}: {code[7:]}: no learning rate follows; set max_lr")
        check = stats.get("loss_scale_check")
        if check is not None:
            message = verdict(check, s.loss, s.loss_scale)
            if message:
                raise LossScaleError(message)
        self._warn_eval(stats, used[1])
        w_max, lam = stats["w_max"], self.lam
        Ls = {v: (s.bound_value(v, stats, lam, w_max) if v in s.variants else None) for v in VARIANTS}
        beta = s.beta_value(stats, lam)
        record.update(step_record(
            step=self.step, epoch=self.epoch, lr=used[0] * self.scale, K_z=stats[f"K_z_{s.kz}"],
            L=Ls["strict"] if s.bound == "smooth" else Ls[s.bound], bound=s.bound, grad_last=stats["grad_last"], grad_layers=stats["grad_layers"],
            clamped=code, L_paper=Ls["paper"], L_corrected=Ls["corrected"], L_strict=Ls["strict"],
            kz=s.kz, kz_mode=self.info["kz_mode"], K_z_rate=_number(used[1]), L_rate=_number(used[2]),
            rate_source=self.info["source"], lr_next=lr_next * self.scale, w_max=w_max, lam=lam, m=stats["m"],
            k=s.num_classes if "k" in s.needs else None,
            K_a=stats["K_a"] if "K_a" in s.needs else None,
            y_norm=stats["y_norm"] if "y_norm" in s.needs else None,
            K_z_frobenius=stats["K_z_frobenius"], K_z_max_abs=stats["K_z_max_abs"],
            variant_optimizer=s.variant_optimizer, loss_scale=s.loss_scale,
            sigma_max=stats["sigma_max"], beta=beta,
            lr_smooth=None if beta is None or beta <= 0 else s.smooth.c_eff(s.momentum) / beta))
        if betas and s.layerwise is not None:
            record["beta_layers"] = dict(zip(s.layerwise.names, betas))
        return None

    def _warn_eval(self, stats: dict[str, Any], K_z_rate: float) -> None:
        s = self.sched
        K_z = stats[f"K_z_{s.kz}"]
        if self.info["kz_mode"] == "eval" and K_z > 10 * K_z_rate:   # (nan compares False)
            ratio = K_z / max(K_z_rate, 1e-300)
            s.warn_once("eval", f"eval-mode K_z={K_z_rate:.4g} is {ratio:.0f}x below this batch's "
                        f"train-mode K_z={K_z:.4g} (BatchNorm or Dropout before the last "
                        f"layer?): the exact protocol's rate is too large; max_lr={s.max_lr} caps it")

