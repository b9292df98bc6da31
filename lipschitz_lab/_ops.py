"""The few elementary functions generated code calls, for floats and tensors alike.

Generated bound functions must accept Python numbers or torch tensors of any
dtype and device and return a value on the input's device.  Each function
here dispatches on its arguments; torch is never imported by this module
(if torch is not loaded, no argument can be a tensor).
"""
from __future__ import annotations

import math
import sys


def _torch_of(*xs):
    torch = sys.modules.get("torch")
    if torch is not None:
        for x in xs:
            if isinstance(x, torch.Tensor):
                return torch, x
    return None, None


def _as_tensor(torch, like, x):
    if isinstance(x, torch.Tensor):
        return x
    dtype = like.dtype if like.dtype.is_floating_point else torch.get_default_dtype()
    return torch.as_tensor(x, dtype=dtype, device=like.device)


def on_device_of(value, *inputs):
    """``value`` as a tensor like the first tensor among ``inputs`` (unchanged without one):
    a generated function that ignores its tensor argument still answers on its device."""
    torch, like = _torch_of(*inputs)
    if torch is None or isinstance(value, torch.Tensor):
        return value
    return _as_tensor(torch, like, value)


def exp(x):
    torch, _ = _torch_of(x)
    if torch:
        return torch.exp(x)
    try:
        return math.exp(x)
    except OverflowError:   # as torch does: e^x = inf, so 1/(1 + e^x) still gives 0
        return math.inf


def log(x):
    torch, _ = _torch_of(x)
    return torch.log(x) if torch else math.log(x)


def sqrt(x):
    torch, _ = _torch_of(x)
    return torch.sqrt(x) if torch else math.sqrt(x)


def Abs(x):  # noqa: N802  (SymPy's name)
    return abs(x)


def Max(*xs):  # noqa: N802
    torch, like = _torch_of(*xs)
    if torch is None:
        return max(xs)
    out = _as_tensor(torch, like, xs[0])
    for x in xs[1:]:
        out = torch.maximum(out, _as_tensor(torch, like, x))
    return out


def sigmoid(x):
    """1/(1+e^{-x}), exact 0 and 1 at extreme arguments (no overflow)."""
    torch, _ = _torch_of(x)
    if torch:
        return torch.sigmoid(x)
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def log_sigmoid(x):
    """log σ(x) = -log(1 + e^{-x}), exact at extreme arguments (no log of 0)."""
    torch, _ = _torch_of(x)
    if torch:
        return torch.nn.functional.logsigmoid(x)
    return -softplus(-x)


def softplus(x):
    """log(1 + e^x) without overflow."""
    torch, _ = _torch_of(x)
    if torch:
        # F.softplus returns x itself above its threshold: off by log1p(e^-x) in float64
        return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def logaddexp(x, y):
    """log(e^x + e^y) without overflow."""
    torch, like = _torch_of(x, y)
    if torch:
        return torch.logaddexp(_as_tensor(torch, like, x), _as_tensor(torch, like, y))
    hi, lo = (x, y) if x >= y else (y, x)
    return hi + math.log1p(math.exp(lo - hi))
