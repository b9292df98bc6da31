"""A LipschitzLR step record, decoded on the host from the numbers the step left on the device.

The step itself only keeps device tensors (the rate in force, the probe's vector, the
next rate, the layer-wise β); :class:`StepDecoder` turns them into the ``schedule`` part of
the step's record at the next flush: the bound in every variant (through the generated
functions, in Python floats), the smoothness β, the clamp, the loss-scale verdict, and the
divergence message if a number is NaN or inf.  Its numbers are read by name
(:data:`~lipschitz_lab.scheduler.rate.RATE`, the probe's layout, :func:`segment_layout`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lipschitz_lab.bounds import CLAMPS, VARIANTS
from lipschitz_lab.errors import LossScaleError
from lipschitz_lab.probe import Field, Probe, StatLayout, StepStats
from lipschitz_lab.probe.curvature import CURVATURE, decode_curvature, edge
from lipschitz_lab.probe.scale import CHECK_LAYOUT
from lipschitz_lab.probe.scale_verdict import scale_verdict
from lipschitz_lab.records import step_record
from lipschitz_lab.scheduler.rate import RATE
from lipschitz_lab.scheduler.rule import RateRule
from lipschitz_lab.steplog import Part

__all__ = ["StepDecoder", "segment_layout"]


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


def segment_layout(stats: StepStats, layers: int, curvature: bool = False) -> StatLayout:
    """The ``schedule`` segment: the rate in force, the step's statistics, the next rate, β per layer,
    and the curvature instruments on a measured step."""
    return StatLayout([Field("used", "local", RATE.size), Field("stats", "local", stats.layout.size),
                       Field("lr_next", "local"), Field("betas", "local", layers),
                       Field("curvature", "local", CURVATURE.size if curvature else 0)])


class StepDecoder:
    """``decode(values) -> Part`` for the StepLog: one per step, holding what the host knew."""

    __slots__ = ("rule", "probe", "stats", "step", "epoch", "scale", "lam", "info", "layer_names", "warn",
                 "curvature", "edge_limit")

    def __init__(self, rule: RateRule, probe: Probe, stats: StepStats, *, step: int, epoch: int, scale: float,
                 lam: float, info: dict[str, Any], layer_names: list[str] | None,
                 warn: Callable[[str, str], None], curvature: bool = False, edge_limit: float | None = None):
        self.rule, self.probe, self.stats, self.step, self.epoch = rule, probe, stats, step, epoch
        self.scale, self.lam, self.info, self.layer_names, self.warn = scale, lam, info, layer_names, warn
        self.curvature, self.edge_limit = curvature, edge_limit

    def __call__(self, values: list[float]) -> Part:
        curvature = CURVATURE.size if self.curvature else 0
        layers = len(values) - RATE.size - self.stats.layout.size - 1 - curvature
        seg = segment_layout(self.stats, layers, self.curvature).unpack(values)
        used = RATE.unpack(seg["used"])
        stats = self.probe.decode(self.stats, seg["stats"], self.step)
        if stats["nonfinite"]:
            return Part(problem=stats["nonfinite"])
        code = CLAMPS[int(used["code"])]
        if code is not None and code.startswith("error"):
            raise ValueError(f"step {self.step}: {code[7:]}: no learning rate follows; set max_lr")
        self._check_scale(stats)
        self._warn_eval(stats, used["K_z"])
        fields = self._fields(stats, used, code, seg["lr_next"])
        if seg["betas"] and self.layer_names is not None:
            fields["beta_layers"] = dict(zip(self.layer_names, seg["betas"]))
        if self.edge_limit is not None:
            fields.update(self._curvature(seg["curvature"], fields["lr"]))
        return Part(fields)

    def _curvature(self, values: list[float], lr: float) -> dict[str, Any]:
        """λ_max, dir_curv, α of a measured step (None on the others) and edge = lr·(λ_max + λ) with the
        rate this update used; edge_limit on every step (2, or 2(1+μ) with heavy ball)."""
        out = decode_curvature(values) if values else dict.fromkeys(CURVATURE.names)
        if out["lambda_max"] is not None:
            out["edge"] = edge(lr, out["lambda_max"], self.lam)
        return {**out, "edge_limit": self.edge_limit}

    def _check_scale(self, stats: dict[str, Any]) -> None:
        check = stats.get("check")
        if check is None:
            return
        named = CHECK_LAYOUT.unpack(check["values"])
        if not named["targeted"]:
            self.warn("targets", "the loss-scale check sees no targets: only |dE/dz| <= S/m per entry is "
                      "checked; sched.wrap_loss(criterion) or sched.observe(y) enables the exact check")
        message = scale_verdict(named, self.rule.loss, self.rule.loss_scale, self.rule.sup_per_term())
        if message:
            raise LossScaleError(message)

    def _fields(self, stats: dict[str, Any], used: dict[str, float], code, lr_next: float) -> dict[str, Any]:
        rule, lam, w_max = self.rule, self.lam, stats["w_max"]
        Ls = {v: (rule.L(v, stats, lam, w_max) if v in rule.variants else None) for v in VARIANTS}
        beta = rule.beta_of(stats, lam)
        return step_record(
            step=self.step, epoch=self.epoch, lr=used["lr"] * self.scale, K_z=stats[f"K_z_{rule.kz}"],
            L=Ls.get(rule.bound, Ls["strict"]), bound=rule.bound,
            grad_last=stats["grad_last"], grad_layers=stats["grad_layers"],
            clamped=code, L_paper=Ls["paper"], L_corrected=Ls["corrected"], L_strict=Ls["strict"],
            kz=rule.kz, kz_mode=self.info["kz_mode"], K_z_rate=_number(used["K_z"]),
            L_rate=_number(used["L"]),
            rate_source=self.info["source"], lr_next=lr_next * self.scale, w_max=w_max, lam=lam, m=stats["m"],
            k=rule.num_classes if "k" in rule.needs else None,
            K_a=stats["K_a"] if "K_a" in rule.needs else None,
            y_norm=stats["y_norm"] if "y_norm" in rule.needs else None,
            K_z_frobenius=stats["K_z_frobenius"], K_z_max_abs=stats["K_z_max_abs"],
            variant_optimizer=rule.variant_optimizer, loss_scale=rule.loss_scale,
            sigma_max=stats["sigma_max"], beta=beta,
            lr_smooth=None if beta is None or beta <= 0 else rule.c_eff() / beta)

    def _warn_eval(self, stats: dict[str, Any], K_z_rate: float) -> None:
        K_z = stats[f"K_z_{self.rule.kz}"]
        if self.info["kz_mode"] == "eval" and K_z > 10 * K_z_rate:   # (nan compares False)
            ratio = K_z / max(K_z_rate, 1e-300)
            self.warn("eval", f"eval-mode K_z={K_z_rate:.4g} is {ratio:.0f}x below this batch's "
                      f"train-mode K_z={K_z:.4g} (BatchNorm or Dropout before the last "
                      f"layer?): the exact protocol's rate is too large; max_lr={self.rule.max_lr} caps it")
