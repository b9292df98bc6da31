"""LipschitzLR's argument checks: bad input raises ValueError naming the field and the value."""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from lipschitz_lab.bounds import bound_inputs, lipschitz_bound
from lipschitz_lab.errors import LossScaleError
from lipschitz_lab.losses import loss_names, task_of
from lipschitz_lab.optim_variants import OPTIMIZERS
from lipschitz_lab.scheduler.options import BOUNDS, RECOMPUTE

__all__ = ["bound_inputs", "check_arguments", "check_loss_inputs", "check_optimizer", "check_momentum",
           "check_criterion", "defined", "is_softmax", "layerwise", "loss_params"]


def check_arguments(*, loss, bound, kz, recompute, min_lr, max_lr, exact_protocol, fixed_after,
                    variant_optimizer, loss_scale) -> None:
    from lipschitz_lab.bounds import KZ_DEFINITIONS
    for field, value, choices in (("loss", loss, loss_names()), ("bound", bound, BOUNDS),
                                  ("kz", kz, KZ_DEFINITIONS), ("recompute", recompute, RECOMPUTE),
                                  ("variant_optimizer", variant_optimizer, OPTIMIZERS)):
        if value not in choices:
            raise ValueError(f"{field} must be one of {', '.join(choices)}; got {field}={value!r}")
    if exact_protocol and recompute != "epoch":
        raise ValueError(f"exact_protocol=True measures once per epoch; got recompute={recompute!r}")
    if min_lr is not None and max_lr is not None and not 0 < min_lr <= max_lr:
        raise ValueError(f"need 0 < min_lr <= max_lr; got min_lr={min_lr!r}, max_lr={max_lr!r}")
    if fixed_after is not None and (isinstance(fixed_after, bool) or not isinstance(fixed_after, int)
                                    or fixed_after < 1):
        raise ValueError(f"fixed_after must be an integer >= 1 or None; got fixed_after={fixed_after!r}")
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float)) or not (
            math.isfinite(loss_scale) and loss_scale > 0):
        raise ValueError(f"loss_scale must be a finite number > 0; got loss_scale={loss_scale!r}")


def check_loss_inputs(loss: str, needs: tuple[str, ...], num_classes, eps) -> None:
    if "k" in needs and (num_classes is None or int(num_classes) < 2):
        raise ValueError(f"num_classes (k >= 2) is required for loss={loss!r}; "
                         f"got num_classes={num_classes!r}")
    if "eps" in needs and eps is None:
        raise ValueError(f"eps (the label smoothing) is required for loss={loss!r}; got eps=None")


def is_softmax(loss: str) -> bool:
    """A softmax loss: its output's last dimension holds the classes (rows × k, or B × T × k)."""
    return task_of(loss) == "multiclass"


def loss_params(needs: tuple[str, ...], num_classes, eps) -> dict[str, Any]:
    """The loss's own parameters (k, eps) that its generated functions take."""
    return {n: v for n, v in (("k", num_classes), ("eps", eps)) if n in needs}


def defined(loss: str, variant: str) -> bool:
    """Does ``loss`` have a bound in ``variant`` (the paper gives none for label_smoothed_ce)?"""
    try:
        lipschitz_bound(loss, variant, K_z=1.0, m=1, k=2, K_a=1.0, y_norm=0.0, eps=0.1)
    except ValueError:
        return False
    return True


def check_optimizer(optimizer: torch.optim.Optimizer, variant: str) -> None:
    momentum = any(g.get("momentum", 0) for g in optimizer.param_groups)
    fits = {"sgd": True, "momentum": isinstance(optimizer, torch.optim.SGD) and momentum,
            "rmsprop": isinstance(optimizer, torch.optim.RMSprop),
            "adam": isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))}[variant]
    if not fits:
        expects = 'SGD with momentum' if variant == 'momentum' else variant
        warnings.warn(f"variant_optimizer={variant!r} expects {expects} "
                      f"but the optimizer is {type(optimizer).__name__}", stacklevel=4)


def check_momentum(optimizer: torch.optim.Optimizer, variant: str, bound: str, warn) -> None:
    """Heavy-ball momentum with the plain-SGD rate: warned once, with the rate that fits.

    Warned, not refused: momentum with 1/L is a legitimate what-if (the catalogue's momentum
    baselines), but it is not what the bound speaks of, so a user must hear why the run may
    fall apart: the heavy ball's steady step is lr/(1 − μ), ten times 1/L at μ = 0.9."""
    momentum = max(float(g.get("momentum", 0.0) or 0.0) for g in optimizer.param_groups)
    if momentum and variant == "sgd" and bound != "smooth":
        warn("momentum", f"the optimizer has momentum={momentum:g} but variant_optimizer='sgd': lr = 1/L is "
             f"the plain-SGD step, and heavy ball takes steps of about lr/(1-momentum) = "
             f"{1 / (1 - momentum):.3g}/L. "
             f"Use variant_optimizer='momentum' (the follow-up paper's rate) or bound='smooth' "
             f"(lr = c(1+momentum)/beta)")


#: torch criteria whose gradient is a known multiple of a lab loss's (reduction="mean")
_KNOWN = {"MSELoss": ("mse", 2.0), "BCEWithLogitsLoss": ("bce", 1.0), "CrossEntropyLoss": (None, 1.0)}


def check_criterion(criterion, loss: str, loss_scale: float, eps) -> None:
    """Before the first step: a torch criterion whose ``reduction`` says its scale."""
    name = type(criterion).__name__
    reduction = getattr(criterion, "reduction", None)
    if not isinstance(criterion, torch.nn.Module) or name not in _KNOWN or reduction is None:
        return                        # a function or an unknown module: the backward check decides
    if reduction == "none":
        raise ValueError(f"criterion {name}(reduction='none') gives one loss per row; LipschitzLR needs the "
                         f"batch mean: use reduction='mean' or lipschitz_lab.losses.make_criterion({loss!r})")
    if reduction == "sum":
        raise LossScaleError(
            f"loss={loss!r}: {name}(reduction='sum') is m times the loss the bound was derived for (the "
            f"batch mean), and m changes with the batch; use reduction='mean' or "
            f"lipschitz_lab.losses.make_criterion({loss!r})")
    target, scale = _KNOWN[name]
    for attr in ("weight", "pos_weight"):
        if getattr(criterion, attr, None) is not None:
            raise ValueError(f"criterion {name}({attr}=...): class weights scale each row's gradient by "
                             f"w_y / Σw, which the derived bound does not cover; drop {attr}= (balance the "
                             f"classes with a WeightedRandomSampler instead)")
    if name == "CrossEntropyLoss":
        smoothing = float(getattr(criterion, "label_smoothing", 0.0))
        target = "label_smoothed_ce" if smoothing else "softmax_ce"
        if smoothing and loss != "label_smoothed_ce":
            raise ValueError(f"criterion CrossEntropyLoss(label_smoothing={smoothing:g}) is label-smoothed "
                             f"cross-entropy: build LipschitzLR with loss='label_smoothed_ce', "
                             f"eps={smoothing:g}")
        if target == "label_smoothed_ce" and eps is not None and abs(smoothing - eps) > 1e-12:
            target = f"label_smoothed_ce with eps={smoothing}"
    if target != loss:
        raise ValueError(f"criterion {name} is the loss {target!r}, but LipschitzLR was built for "
                         f"loss={loss!r}")
    if abs(scale / loss_scale - 1.0) > 1e-12:
        raise LossScaleError(
            f"loss={loss!r}: {name}() is {scale:g} times the loss the bound was derived for "
            f"(the batch mean{', ½·MSE' if loss == 'mse' else ''}); use "
            f"lipschitz_lab.losses.make_criterion({loss!r}) or pass "
            f"loss_scale={scale:g} to LipschitzLR")


def layerwise(model, optimizer, bound: str, recompute: str, smooth):
    """``(LayerwiseSmoothness, the layer of each param group)`` when ``smooth.layerwise``,
    else (None, None)."""
    if not smooth.layerwise:
        return None, None
    if bound != "smooth" or recompute != "step":
        raise ValueError(f"layerwise=True is a smoothness rule renewed every step; got bound={bound!r}, "
                         f"recompute={recompute!r}")
    from lipschitz_lab.scheduler.layerwise import LayerwiseSmoothness
    rule = LayerwiseSmoothness(model, smooth.power_iters)
    return rule, rule.group_layers(optimizer)
