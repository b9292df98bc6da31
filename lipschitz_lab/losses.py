"""The loss registry: a :class:`~lipschitz_lab.symbolic.LossSpec` registered once is usable everywhere.

Every loss has, from one definition: its derivation (``lipschitz-lab derive``),
its generated bounds (:mod:`lipschitz_lab.bounds`), its torch criterion
(:func:`make_criterion`), its gradient in the outputs (:func:`grad_logits`)
and its task (:func:`task_of`).  The built-in losses come from the checked-in
``_generated.py``, so importing this module needs no SymPy; :func:`register`
derives a user's spec and generates the same functions at run time.

Each criterion returns the batch mean, so that the paper's ``1/m`` is part of
E (eqs. 7, 10, 16).  The built-ins keep torch's fused criteria for speed and
stability (``F.cross_entropy`` ...); ``tests/test_losses.py`` proves each equal
to the generated batch loss, the spec's own expression.  A user's loss gets
the generated criterion.
"""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from lipschitz_lab import _generated, bounds

#: the tasks a data set can have (each loss suits one)
TASK_NAMES = ("multiclass", "binary", "regression")
DEFAULT_EPS = 0.1                   # label smoothing when none is given (make_criterion's default)
#: loss -> {"batch", "task", "labels"}: the built-ins' from the generated code, then registered ones
_INFO: dict[str, dict] = {name: dict(info) for name, info in _generated.LOSS_INFO.items()}
_BUILTIN = tuple(_INFO)
_LOG: list[str] = []                # every register() call's name, in order (load_loss_module reads it)


def loss_names() -> tuple[str, ...]:
    """Every loss usable for training: the built-ins, then registered ones in order (live)."""
    return bounds.loss_names()


#: the same names as a live sequence (``name in LOSSES`` sees later registrations too)
LOSSES = bounds.LOSSES


class _LiveTasks(Mapping):
    """``TASKS[name]``: each loss's task, registered losses included."""

    def __getitem__(self, name):
        return task_of(name)

    def __iter__(self):
        return iter(loss_names())

    def __len__(self):
        return len(loss_names())


TASKS = _LiveTasks()


def _info(name: str) -> dict:
    if name not in _INFO:
        raise ValueError(f"loss must be one of {', '.join(loss_names())}; got loss={name!r}")
    return _INFO[name]


def task_of(name: str) -> str:
    """"multiclass", "binary" or "regression": the data set a loss needs."""
    return _info(name)["task"]


def _check_task(name: str, task: str | None, batch: str) -> str:
    if task is None:
        raise ValueError(f"task: cannot tell the task of loss {name!r} from its spec; "
                         f"pass task= one of {', '.join(TASK_NAMES)}")
    if task not in TASK_NAMES:
        raise ValueError(f"task must be one of {', '.join(TASK_NAMES)}; got task={task!r}")
    if (batch == "softmax") != (task == "multiclass"):
        raise ValueError(f"task={task!r} does not suit loss {name!r}: a softmax loss is multiclass, "
                         "an elementwise loss (one output) is binary or regression")
    return task


def register(spec, *, task: str | None = None) -> str:
    """Derive ``spec``, generate its bounds and criterion, and make its name usable everywhere.

    ``task`` is inferred when the spec shows it (a softmax loss → multiclass, a
    two-valued target → binary, a target on an interval → regression).
    Registering a name again replaces that user loss; a built-in's name is a
    ValueError.  Returns the name.
    """
    from lipschitz_lab.symbolic import BUILTIN_NAMES, LossSpec, derive, register_loss
    from lipschitz_lab.symbolic.codegen import generate_source
    if not isinstance(spec, LossSpec):
        raise ValueError(f"spec must be a LossSpec; got spec={spec!r}")
    if spec.name in BUILTIN_NAMES:
        raise ValueError(f"name={spec.name!r} is a built-in loss; give yours another name")
    d = derive(spec)
    info = dict(d.info)
    info["task"] = _check_task(spec.name, task or info["task"], info["batch"])
    namespace: dict = {}
    exec(compile(generate_source({spec.name: d}), f"<generated {spec.name}>", "exec"), namespace)
    functions = {key: fn for key, fn in namespace["FUNCTIONS"].items() if key[0] == spec.name}
    unregister(spec.name)
    register_loss(spec)
    bounds._install(functions)
    _INFO[spec.name] = info
    _LOG.append(spec.name)
    return spec.name


def unregister(name: str) -> None:
    """Forget a registered loss (a no-op for a name never registered; built-ins stay)."""
    if name in _BUILTIN:
        raise ValueError(f"name={name!r} is a built-in loss and cannot be removed")
    if name in _INFO:
        from lipschitz_lab.symbolic import unregister_loss
        unregister_loss(name)
    _INFO.pop(name, None)
    for key in [key for key in bounds.FUNCTIONS if key[0] == name]:
        del bounds.FUNCTIONS[key]


def load_loss_module(path) -> list[str]:
    """Import a Python file that registers losses (or defines LossSpec objects); their names.

    LossSpec objects the file defines at top level without registering them
    are registered here (task inferred).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"loss module path={str(path)!r} is not a file")
    from lipschitz_lab.symbolic import LOSS_SPECS, LossSpec
    start = len(_LOG)
    module_name = f"_lipschitz_lab_losses_{p.stem}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, p)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module     # lets the file's dataclasses and pickles find it
        module_spec.loader.exec_module(module)
    except Exception as exc:                  # any error in the user's file, reported with its path
        raise ValueError(f"loss module path={str(path)!r} failed to load: {exc}") from exc
    for obj in list(vars(module).values()):
        if isinstance(obj, LossSpec) and LOSS_SPECS.get(obj.name) is not obj:
            register(obj)
    names = [name for name in dict.fromkeys(_LOG[start:]) if name in _INFO]
    if not names:
        raise ValueError(f"loss module path={str(path)!r} defines no LossSpec and registers none")
    return names


# -- criteria --------------------------------------------------------------------------------
def _mse(eps):
    def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * F.mse_loss(output.reshape(target.shape), target.to(output.dtype))
    return mse


def _bce(eps):
    def bce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.reshape(target.shape), target.to(output.dtype))
    return bce


def _label_smoothed_ce(eps):
    def label_smoothed_ce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, label_smoothing=eps)
    return label_smoothed_ce


#: torch's fused criteria for the built-ins (equal to the generated ones: tests/test_losses.py)
_TORCH = {"mse": _mse, "bce": _bce, "softmax_ce": lambda eps: F.cross_entropy,
          "label_smoothed_ce": _label_smoothed_ce}


def _check_eps(name: str, eps) -> None:
    uses_eps = any(key[0] == name and "eps" in args for key, (_, args) in bounds.FUNCTIONS.items())
    if uses_eps and not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got eps={eps!r}")


def make_criterion(name: str, *, eps: float = DEFAULT_EPS):
    """``criterion(output, target) -> scalar``, the batch mean of a registered loss.

    - ``mse``: E = 1/(2m) Σ (a - y)^2, one output (eq. 7).
    - ``bce``: binary cross-entropy on a sigmoid of the single logit (eq. 10).
    - ``softmax_ce``: softmax cross-entropy over k classes (eq. 16).
    - ``label_smoothed_ce``: the same with label smoothing ``eps``.
    - a registered loss: its generated batch loss (:func:`generated_criterion`).
    """
    _info(name)
    _check_eps(name, eps)
    if name in _TORCH:
        return _TORCH[name](eps)
    return generated_criterion(name, eps=eps)


def _targets(info: dict, target: torch.Tensor, dtype) -> torch.Tensor:
    """The spec's y: a binary data set's 0/1 become the spec's two label values."""
    labels = info["labels"]
    if labels is None or tuple(labels) == (0, 1):
        return target.to(dtype)
    lo, hi = labels
    on = (target == 1) | (target == hi)
    return torch.where(on, torch.tensor(hi, dtype=dtype, device=target.device),
                       torch.tensor(lo, dtype=dtype, device=target.device))


def _call(name: str, what: str, given: dict):
    fn, args = bounds.FUNCTIONS[(name, what)]
    missing = [a for a in args if given.get(a) is None]
    if missing:
        raise ValueError(f"loss {name!r} needs {', '.join(missing)}; got {missing[0]}=None")
    return fn(**{a: given[a] for a in args})


def _sum(value, like: torch.Tensor) -> torch.Tensor:
    """Σ of a generated piece over the batch; a constant piece counts once per element."""
    return torch.broadcast_to(torch.as_tensor(value, dtype=like.dtype, device=like.device), like.shape).sum()


def generated_criterion(name: str, *, eps: float = DEFAULT_EPS):
    """The batch loss printed from the spec itself: Σ_i E(z_i, y_i), or Σ u(z, t) + Σ v(lse)."""
    info = _info(name)
    _check_eps(name, eps)

    def criterion(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = output.shape[0]
        if info["batch"] == "softmax":
            # a negative target (torch's ignore_index -100, a -1 pad) is not a term of the mean
            keep = (target >= 0).to(output.dtype)
            t = F.one_hot(target.clamp(min=0), output.shape[1]).to(output.dtype)
            given = {"z": output, "t": t, "m": keep.sum(), "k": output.shape[1], "eps": eps,
                     "lse": torch.logsumexp(output, dim=1)}
            like = {"dtype": output.dtype, "device": output.device}
            unit = torch.broadcast_to(torch.as_tensor(_call(name, "E_unit", given), **like), output.shape)
            norm = torch.broadcast_to(torch.as_tensor(_call(name, "E_norm", given), **like), given["lse"].shape)
            return (unit * keep[:, None]).sum() + (norm * keep).sum()
        z = output.reshape(target.shape)
        given = {"z": z, "y": _targets(info, target, output.dtype), "m": m, "eps": eps}
        return _sum(_call(name, "E", given), z)
    criterion.__name__ = f"{name}_generated"
    return criterion


# -- the gradient in the outputs -------------------------------------------------------------
def _logsumexp_others(Z: torch.Tensor) -> torch.Tensor:
    """r_ip = log Σ_{l≠p} e^{Z_il} to rounding (absolute), shifted by the largest other logit."""
    top = Z.topk(2, dim=1)
    M, M2 = top.values[:, :1], top.values[:, 1:]
    is_max = F.one_hot(top.indices[:, 0], Z.shape[1]).bool()
    # p not the argmax: the argmax term (e^0 = 1) stays in the sum, so it is >= 1
    S1 = torch.exp(Z - M).sum(dim=1, keepdim=True)
    r_other = M + torch.log(S1 - torch.exp(Z - M))
    # p the argmax: shift by the second largest instead
    S2 = torch.exp(Z - M2).masked_fill(is_max, 0).sum(dim=1, keepdim=True)
    return torch.where(is_max, M2 + torch.log(S2), r_other)


def grad_logits(name: str, output: torch.Tensor, target: torch.Tensor, *, m=None, **params) -> torch.Tensor:
    """∂E/∂output for the derived loss E (the batch mean), from the generated dE/dz.

    No autograd and no host sync: the output's device and dtype, its shape.
    ``m`` defaults to the batch size (scale by a union batch by passing it);
    ``params`` are the loss's other inputs (``eps`` defaults to 0.1 as in
    :func:`make_criterion`).  Softmax losses read unit p of row i as z = logit,
    r = log-sum-exp of the row's other logits, t = [target_i = p]; elementwise
    losses read z = the single output, y = the target (binary 0/1 mapped to the
    spec's label values).  A softmax loss also takes probability targets of the output's
    shape (mixup, cutmix, distillation): t is then the target distribution itself, which the
    unit's dE/dz = σ(z − r) − t covers for any t in [0, 1] with Σt = 1 (derived in
    :mod:`lipschitz_lab.symbolic.soft_targets`).
    """
    info = _info(name)
    given = {"eps": DEFAULT_EPS, **params, "m": output.shape[0] if m is None else m}
    if info["batch"] == "softmax":
        k = output.shape[1]
        soft = target.is_floating_point() and target.shape == output.shape   # probabilities (mixup)
        given.update(z=output, r=_logsumexp_others(output), k=k,
                     t=target.to(output.dtype) if soft else F.one_hot(target, k).to(output.dtype))
        shape = output.shape
    else:
        z = output.reshape(target.shape)
        given.update(z=z, y=_targets(info, target, output.dtype))
        shape = z.shape
    g = _call(name, "dE_dz", given)
    return torch.broadcast_to(torch.as_tensor(g, dtype=output.dtype, device=output.device),
                              shape).reshape(output.shape)
