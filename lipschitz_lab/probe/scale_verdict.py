"""The loss-scale check's verdict, on the host at a flush: None, or the one-line error and its fix.

The numbers come from :class:`~lipschitz_lab.probe.scale.ScaleCheck` (see there for the
math).  The messages name the fix that fits the cause: ``make_criterion`` or
``loss_scale`` for a scaled loss, ``scaler=`` for a GradScaler's scale (never
``loss_scale``), ``loss="label_smoothed_ce", eps=...`` for torch's label smoothing,
``observe(targets)`` for a mean over fewer terms than the bound assumes.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["scale_verdict", "SCALE_TOL", "RESIDUAL_TOL"]

#: |c / loss_scale - 1| above this is a different loss.  The real and the derived gradient agree
#: to float32 rounding (~1e-7) and, under bf16 autocast, to ~4e-3 per element, far below 5%;
#: the smallest wrong factor in practice is 2 (nn.MSELoss, two micro-batches), far above it.
SCALE_TOL = 0.05
#: a residual above this means the gradient is not a multiple of the derived one at all
RESIDUAL_TOL = 0.05


def _nice(c: float) -> str:
    r = round(c)
    return str(r) if r and abs(c / r - 1.0) < 1e-3 else f"{c:.4g}"


def _grad_scaler_like(c: float) -> bool:
    """A factor that is a power of two of at least 2^7: GradScaler's scale, not a user's loss."""
    if not math.isfinite(c) or c < 128:
        return False
    e = math.log2(c)
    return abs(e - round(e)) < 1e-3


def _scaled(loss: str, c: float, what: str) -> str:
    if _grad_scaler_like(c):
        return (f"loss={loss!r}: {what} {c:.4g} times the loss the bound was derived for, a power of "
                f"two: torch.amp.GradScaler's loss scale. Pass scaler=<your GradScaler> to LipschitzLR "
                f"(the check and the bound then divide it out); do not pass loss_scale")
    e = math.log2(c) if c > 0 and math.isfinite(c) else 0.5
    amp = (" (a power of two: if this is torch.amp.GradScaler's scale, pass scaler=<your GradScaler> "
           "instead)") if c >= 4 and abs(e - round(e)) < 1e-3 else ""
    return (f"loss={loss!r}: {what} {c:.4g} times the loss the bound was derived for "
            f"(mean over the batch{', ½·MSE' if loss == 'mse' else ''}){amp}; the bound would not hold. "
            f"Use lipschitz_lab.losses.make_criterion({loss!r}), or pass loss_scale={_nice(c)} "
            f"to LipschitzLR (reduction='sum' and undivided gradient accumulation give m or N)")


def _smoothing(check: dict[str, float], loss: str) -> str | None:
    """torch's label_smoothing: m·g − o = ε̂·(onehot − 1/k) with a small residual."""
    de, ee, dd = check["de"], check["ee"], check["dd"]
    if loss != "softmax_ce" or ee <= 0 or dd <= 0:
        return None
    eps = de / ee
    if not 0.0 < eps < 1.0 or max(dd - de * de / ee, 0.0) / dd > RESIDUAL_TOL ** 2:
        return None
    return (f"loss='softmax_ce': your loss is label-smoothed cross-entropy (label_smoothing ≈ {eps:.3g}); "
            f"use loss='label_smoothed_ce' with eps={eps:.3g} (TrainConfig(loss=..., eps=...), or "
            f"LipschitzLR(..., 'label_smoothed_ce', eps={eps:.3g}))")


def _exact(check: dict[str, float], loss: str, loss_scale: float) -> str | None:
    ro, oo, rr, m = check["ro"], check["oo"], check["rr"], check["m"]
    if oo <= 0 or rr <= 0:
        return None               # nothing to compare (a zero gradient)
    c = m * ro / oo
    residual = math.sqrt(max(rr - ro * ro / oo, 0.0) / rr)
    if residual <= RESIDUAL_TOL and abs(c / loss_scale - 1.0) <= SCALE_TOL:
        return None
    smoothed = _smoothing(check, loss)       # torch's label_smoothing looks like a scale of 1 − ε
    if smoothed:
        return smoothed
    if residual > RESIDUAL_TOL:
        return (f"loss={loss!r}: the gradient at the logits is not a multiple of the derived loss's "
                f"(relative residual {residual:.3g}); the criterion is not {loss!r}. Class weights "
                f"(weight=...) or label smoothing do this: drop weight= (sample the classes instead), "
                f"or use lipschitz_lab.losses.make_criterion({loss!r}), or register your own LossSpec")
    return _scaled(loss, c, "your loss is")


def _target_free(check: dict[str, float], loss: str, loss_scale: float,
                 sup_per_term: float | None) -> str | None:
    """|g_ij| <= loss_scale·S/m for every entry: what the bound needs, from the output alone."""
    if sup_per_term is None or not sup_per_term > 0:
        return None
    allowed = loss_scale * sup_per_term / check["m"]
    ratio = check["gz_max"] / allowed
    if ratio <= 1.0 + SCALE_TOL:
        return None
    amp = ("If this is torch.amp.GradScaler's loss scale, pass scaler=<your GradScaler> to LipschitzLR. "
           "Otherwise y" if ratio >= 8 else "Y")
    return (f"loss={loss!r}: the gradient at the logits reaches {check['gz_max']:.4g}, {ratio:.3g} times "
            f"the most the bound allows per entry ({allowed:.4g} = S/m with m={int(check['m'])}). {amp}our "
            f"loss is scaled by at least {ratio:.3g}, or it averages fewer terms than m (padding: pass the "
            f"targets). Give the targets with sched.wrap_loss(criterion) or sched.observe(y) for the "
            f"exact check; use lipschitz_lab.losses.make_criterion({loss!r}) or pass loss_scale=<factor>")


def scale_verdict(check: dict[str, Any], loss: str, loss_scale: float,
                  sup_per_term: float | None) -> str | None:
    """None when the loss is the derived one times ``loss_scale``; else the one-line error.

    ``sup_per_term``: the derived sup |∂e/∂z| of one term (m = 1), or None when it needs the
    targets (mse's ‖y‖): then only the exact check can speak."""
    if not all(math.isfinite(v) for v in check.values()):
        return None               # NaN is the divergence check's
    if check["targeted"]:
        found = _exact(check, loss, loss_scale)
        if found:
            return found
    return _target_free(check, loss, loss_scale, sup_per_term)
