r"""Numeric Lipschitz bounds, built only from the generated functions.

.. math::

    L = L_\text{variant}(K_z, m, \dots) + \lambda \cdot \max\|w\|, \qquad lr = 1/L

where the variant is

- ``paper``: the bound as published (eqs. 9, 15, 20);
- ``corrected``: :math:`\sup|\partial E/\partial z| \cdot K_z`, the supremum
  derived in :mod:`lipschitz_lab.symbolic` (same framework, same K_z, m, k);
- ``strict``: a rigorous bound on the last layer's mean-over-batch gradient
  for this batch; it depends on how K_z was measured (``kz``).

No formula is typed here: every number comes from ``_generated.py``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from lipschitz_lab import _generated, _ops

VARIANTS = ("paper", "corrected", "strict")
KZ_DEFINITIONS = ("frobenius", "max_abs")
#: (loss, what) -> (function, argument names): the checked-in code plus every registered loss
FUNCTIONS = dict(_generated.FUNCTIONS)
#: what a bound's inputs are read from (the batch-loss pieces take z, y, t, lse instead)
_BOUND_KEYS = ("sup", "smooth", "paper", "corrected", "strict_max_abs", "strict_frobenius")


def loss_names() -> tuple[str, ...]:
    """Every loss with generated functions: built-ins first, then registered ones in order."""
    return tuple(dict.fromkeys(loss for loss, _ in FUNCTIONS if loss != "*"))


class _LiveNames(Sequence):
    """``LOSSES``: the loss names as they are now, even when imported before a registration."""

    def __getitem__(self, i):
        return loss_names()[i]

    def __len__(self):
        return len(loss_names())

    def __eq__(self, other):
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, Sequence)) else NotImplemented

    __hash__ = None

    def __repr__(self):
        return repr(loss_names())


LOSSES = _LiveNames()


def _install(functions: dict) -> None:
    """Add a registered loss's generated functions (called by ``losses.register``)."""
    FUNCTIONS.update(functions)


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)}; got {field}={value!r}")


def _function(loss: str, variant: str, kz: str):
    _check_loss(loss)
    _check_choice("bound", variant, VARIANTS)
    _check_choice("kz", kz, KZ_DEFINITIONS)
    key = (loss, f"strict_{kz}" if variant == "strict" else variant)
    if key not in FUNCTIONS:
        raise ValueError(f"the paper gives no bound for loss={loss!r}; use bound='corrected' or 'strict'")
    return FUNCTIONS[key]


def bound_inputs(loss: str) -> tuple[str, ...]:
    """Inputs a loss needs besides K_z, m, lam and w_max (e.g. ``("k",)``)."""
    _check_loss(loss)
    names: dict[str, None] = {}
    for (name, what), (_, args) in FUNCTIONS.items():
        if name == loss and what in _BOUND_KEYS:
            names.update(dict.fromkeys(a for a in args if a not in ("K_z", "m")))
    return tuple(names)


def _check_loss(loss: str) -> None:
    _check_choice("loss", loss, loss_names())


def _validate(field: str, value, *, minimum: float, strict: bool = False, integer: bool = False):
    """Check plain numbers; tensors pass through (checking them would sync the device)."""
    if value is None:
        raise ValueError(f"{field} is required")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if hasattr(value, "dtype"):   # a tensor
            return
        raise ValueError(f"{field} must be a number; got {field}={value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{field} must be finite; got {field}={value!r}")
    if integer and value != int(value):
        raise ValueError(f"{field} must be an integer; got {field}={value!r}")
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{field} must be {op} {minimum:g}; got {field}={value!r}")


def _validate_params(args, given: dict) -> None:
    """m always; k, K_a, y_norm and eps where the function takes them."""
    _validate("m", given["m"], minimum=0, strict=True, integer=True)
    if "k" in args:
        _validate("k", given["k"], minimum=2, integer=True)
    for name in ("K_a", "y_norm"):
        if name in args:
            _validate(name, given[name], minimum=0)
    if "eps" in args:
        eps = given["eps"]
        _validate("eps", eps, minimum=0)
        if not hasattr(eps, "dtype") and eps >= 1:
            raise ValueError(f"eps must be < 1; got eps={eps!r}")


def lipschitz_bound(loss: str, variant: str = "paper", *, K_z, m, k=None, K_a=None,
                    y_norm=None, eps=None, lam=0.0, w_max=0.0, kz: str = "frobenius"):
    r"""L, including the weight-decay term :math:`\lambda \cdot \max\|w\|`.

    Accepts Python numbers or torch tensors (any dtype and device); a tensor
    input gives a tensor on its device.
    """
    fn, args = _function(loss, variant, kz)
    given = {"K_z": K_z, "m": m, "k": k, "K_a": K_a, "y_norm": y_norm, "eps": eps}
    _validate("K_z", K_z, minimum=0)
    _validate_params(args, given)
    _validate("lam", lam, minimum=0)
    _validate("w_max", w_max, minimum=0)
    L = fn(**{a: given[a] for a in args})
    wd_fn, wd_args = FUNCTIONS[("*", "weight_decay")]
    return L + wd_fn(**{"lam": lam, "w_max": w_max})


def smoothness_bound(loss: str, *, m, k=None, eps=None):
    r"""S₂, the supremum of the loss's second derivative in the logits.

    .. math::

        S_2 = \sup_z \|\nabla^2_z E\|_2

    (for softmax losses the spectral norm of the Hessian in a sample's k
    logits).  A float, or a tensor on the inputs' device for tensor inputs
    (no host sync).  Derived in :mod:`lipschitz_lab.symbolic.smoothness`.
    """
    _check_loss(loss)
    fn, args = FUNCTIONS[(loss, "smooth")]
    given = {"m": m, "k": k, "eps": eps}
    _validate_params(args, given)
    return _ops.on_device_of(fn(**{a: given[a] for a in args}), m, k, eps)


#: what a rate's clamp code means (0: the rate is 1/L as it is); codes 5-7 are errors
CLAMPS = (None, "min_lr", "max_lr", "K_z=0", "L<0", "error: L = 0 and max_lr=None",
          "error: L < 0 and max_lr=None", "error: L is not finite")


def _clamp(L, K_z, min_lr: float | None, max_lr: float | None):
    """``(lr, code)`` as float64 0-d tensors on L's device: the one clamping rule (no sync)."""
    import torch
    L = L.to(torch.float64)
    lr = 1.0 / L
    code = torch.zeros_like(lr)
    if max_lr is not None:
        hi = lr > max_lr
        lr, code = torch.where(hi, max_lr, lr), torch.where(hi, 2.0, code)
    if min_lr is not None:
        lo = lr < min_lr
        lr, code = torch.where(lo, min_lr, lr), torch.where(lo, 1.0, code)
    zero, neg = L == 0, L < 0
    if max_lr is None:
        lr = torch.where(zero | neg, torch.nan, lr)
        code = torch.where(zero, 5.0, torch.where(neg, 6.0, code))
    else:
        lr = torch.where(zero | neg, max_lr, lr)
        code = torch.where(zero, 3.0, torch.where(neg, 4.0, code))
    if K_z is not None:        # K_z = 0 at the max_lr clamp: say why
        code = torch.where((K_z == 0) & (code == 2.0), 3.0, code)
    return lr, torch.where(torch.isfinite(L), code, 7.0)


def learning_rate(L, *, min_lr: float | None = None, max_lr: float | None = None, K_z=None):
    """``(lr, clamped)`` with lr = 1/L, clamped to ``[min_lr, max_lr]``.

    ``clamped`` is None, ``"min_lr"``, ``"max_lr"``, ``"K_z=0"`` (L = 0: the
    rule would give an infinite rate; ``max_lr`` is used instead and said so) or
    ``"L<0"`` (the paper's mse bound when y_norm > K_a: no rate follows; ``max_lr``).
    Without a ``max_lr`` to fall back on, L <= 0 raises, as does a NaN or infinite L.

    For a tensor L (on any device): ``(lr, code)`` as float64 0-d tensors, ``CLAMPS[code]``
    the case, errors as codes 5-7; nothing waits for the device.  ``K_z`` (optional) names
    K_z = 0 as the reason for a ``max_lr`` clamp.
    """
    if hasattr(L, "dtype"):
        return _clamp(L, K_z, min_lr, max_lr)
    import torch
    L = float(L)
    if math.isnan(L) or math.isinf(L):
        raise ValueError(f"L must be finite; got L={L!r}")
    lr, code = _clamp(torch.tensor(L, dtype=torch.float64), None if K_z is None else torch.tensor(float(K_z)),
                      min_lr, max_lr)
    clamped = CLAMPS[int(code)]
    if clamped == "error: L = 0 and max_lr=None":
        raise ValueError("K_z = 0 gives L = 0 and an infinite learning rate; set max_lr")
    if clamped == "error: L < 0 and max_lr=None":
        raise ValueError(f"L must be >= 0; got L={L!r} (the paper's mse bound is negative when "
                         "y_norm > K_a); set max_lr to clamp")
    return float(lr), clamped


def derivative(loss: str):
    """The generated dE/dz of a loss and its argument names (for plots and tests)."""
    _check_loss(loss)
    return FUNCTIONS[(loss, "dE_dz")]


def supremum(loss: str, **params):
    """The derived sup |dE/dz| of a loss at these parameters."""
    _check_loss(loss)
    fn, args = FUNCTIONS[(loss, "sup")]
    return fn(**{a: params[a] for a in args})
