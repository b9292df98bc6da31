r"""The batch loss's Hessian at the weights behind a step: Hessian-vector products by double
backward, and the replayed forward that gives that loss.

A step's Hessian is the Hessian of *its* batch loss in every trainable parameter, at the
weights that produced its gradient (the convention of ``w_max``).  :func:`hessian_at`
rebuilds that loss from the step's input with :func:`torch.func.functional_call` at a
snapshot of the weights, so the measurement neither moves the model nor sees the update:

- the model's mode is kept: in training, BatchNorm normalises with the *batch's* statistics
  (the train-mode Hessian, the one the update sees), and its running statistics are not
  touched (the forward updates copies);
- dropout draws the step's own masks when given the RNG state captured before the step's
  forward (:func:`capture_rng`); the global RNG is put back afterwards;
- the model's forward hooks are muted, so the probe does not measure the extra forward.

The forward runs in float32 without autocast: under AMP the Hessian is that of the
full-precision loss at the same weights.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lipschitz_lab.probe.params import trainable_parameters

__all__ = ["BatchHessian", "RNGState", "capture_rng", "dot", "hessian_at", "muted", "replayed"]

Vectors = list[torch.Tensor]


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """:math:`a^\\top b` over lists of tensors, as a float64 0-d tensor (no sync)."""
    return torch.stack([(x * y).sum(dtype=torch.float64) for x, y in zip(a, b)]).sum()


class BatchHessian:
    r"""Products :math:`Hv` with the Hessian of one scalar loss in ``params``.

    .. math::

        H v = \nabla_w \bigl( \nabla_w \ell(w)^\top v \bigr)

    (Pearlmutter 1994): the gradient is built once with ``create_graph=True``; each product is
    one backward through it.  Cost on the Table-1 CNN (benchmarks/RESULTS.md): the gradient
    about 1.2 training steps, each product about 2.

    ``grad`` is the (detached) gradient at the same weights and batch; ``loss`` the loss.
    """

    def __init__(self, loss: torch.Tensor, params: Sequence[torch.Tensor]):
        self.params = list(params)
        self.loss = loss.detach()
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.grad: Vectors = [torch.zeros_like(p) if g is None else g.detach()
                              for g, p in zip(grads, self.params)]
        # a gradient that does not depend on the weights (a linear loss) has no second derivative
        self._live = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.products = 0                       # how many H·v this measurement paid for

    def __call__(self, v: Sequence[torch.Tensor]) -> Vectors:
        """:math:`Hv` for ``v`` laid out like ``params``."""
        self.products += 1
        if not self._live:
            return [torch.zeros_like(p) for p in self.params]
        hv = torch.autograd.grad([g for _, g in self._live], self.params,
                                 grad_outputs=[v[i].to(g.dtype) for i, g in self._live],
                                 retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for h, p in zip(hv, self.params)]


@dataclass(frozen=True)
class RNGState:
    """The generator states that decide dropout's masks: the CPU's, and the device's on CUDA."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None = None
    device: int | None = None


def capture_rng(device: torch.device | str | None = None) -> RNGState:
    """The RNG state now (call it just before the step's forward: the masks are drawn from it).
    On CUDA the generator's seed and offset are host-side: reading them does not wait."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return RNGState(torch.get_rng_state(), torch.cuda.get_rng_state(index), index)
    return RNGState(torch.get_rng_state())


@contextmanager
def muted(model: nn.Module) -> Iterator[None]:
    """Every forward hook of ``model``'s modules off for the block (the probe's among them)."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    for m, _, _ in saved:
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for m, post, pre in saved:
            m._forward_hooks, m._forward_pre_hooks = post, pre


@contextmanager
def replayed(model: nn.Module, rng: RNGState | None = None, mute_hooks: bool = True,
             device: torch.device | None = None) -> Iterator[None]:
    """A measuring forward: hooks muted, the RNG set to ``rng`` (the step's dropout masks) and
    the global RNG (and ``device``'s, on CUDA) put back afterwards, so training draws what it
    would have drawn."""
    devices = [rng.device] if rng is not None and rng.cuda is not None else []
    if not devices and device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices, enabled=True):
        if rng is not None:
            torch.set_rng_state(rng.cpu)
            if rng.cuda is not None:
                torch.cuda.set_rng_state(rng.cuda, rng.device)
        if mute_hooks:
            with muted(model):
                yield
        else:
            yield


def hessian_at(model: nn.Module, inputs, loss_of: Callable[[torch.Tensor], torch.Tensor], *,
               weights: Mapping[str, torch.Tensor] | None = None, rng: RNGState | None = None,
               kwargs: Mapping[str, Any] | None = None, mute_hooks: bool = True) -> BatchHessian:
    r"""The Hessian of ``loss_of(model(*inputs))`` in every trainable parameter, at ``weights``.

    ``inputs`` is the step's input (a tensor, or a tuple of the forward's arguments; ``kwargs``
    its keyword arguments);
    ``loss_of(output)`` the batch loss (e.g. ``lambda z: criterion(z.float(), y)``);
    ``weights`` maps the names of :func:`~lipschitz_lab.probe.params.trainable_parameters`
    to tensors (default: the parameters as they are, which must then not change while the
    products are taken).  The products' vectors are laid out in that order.
    """
    names, params, _ = trainable_parameters(model)
    if weights is not None:
        missing = [n for n in names if n not in weights]
        if missing:
            more = " ..." if len(missing) > 3 else ""
            raise ValueError(f"weights is missing parameters {missing[:3]}{more}")
    leaves = [(weights[n] if weights is not None else p).detach().requires_grad_(True)
              for n, p in zip(names, params)]
    buffers = {n: b.clone() for n, b in model.named_buffers()}     # BatchNorm updates these copies
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    device = args[0].device
    # the math kernel of scaled_dot_product_attention: the fused ones (flash, memory-efficient) have
    # no second derivative, and a Hessian-vector product needs one
    with replayed(model, rng, mute_hooks, device), torch.autocast(device.type, enabled=False), \
            sdpa_kernel(SDPBackend.MATH):
        tensors = {**dict(zip(names, leaves)), **buffers}
        out = torch.func.functional_call(model, tensors, args, dict(kwargs or {}))
        loss = loss_of(out)
        return BatchHessian(loss, leaves)
