r"""LipschitzLR: the learning rate lr = 1/L of Yedida & Saha (2019), as a torch scheduler."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from lipschitz_lab.bounds import VARIANTS, bound_inputs, lipschitz_bound, smoothness_bound
from lipschitz_lab.optim_variants import BoundEMA
from lipschitz_lab.probe import Probe
from lipschitz_lab.probe.scale import ScaleCheck
from lipschitz_lab.records import Record, Subscriber
from lipschitz_lab.scheduler import checks, transitions
from lipschitz_lab.scheduler.options import EMAOptions, SmoothOptions
from lipschitz_lab.scheduler.rate import lr_mode, tensorize, write_group_rates, write_rate
from lipschitz_lab.steplog import StepLog

__all__ = ["LipschitzLR"]


class LipschitzLR(LRScheduler):
    r"""Sets the learning rate of every param group to the inverse of the
    Lipschitz bound of the loss, measured on the training batches.

    .. math::

        lr = \operatorname{clamp}\!\left(\frac{1}{L},\ \text{min\_lr},\ \text{max\_lr}\right),
        \qquad
        L = c_\text{loss}\, L_\text{bound}(K_z, m, k, K_a, \|y\|) + \lambda \max\|w\|

    where:
        - :math:`L_\text{bound}` is the generated bound of :mod:`lipschitz_lab.bounds`
          (``paper``: eqs. 9, 15, 20; ``corrected``; ``strict``), or, for
          ``bound="smooth"``, lr = c/β (:class:`~lipschitz_lab.scheduler.options.SmoothOptions`);
        - :math:`K_z` is the penultimate activations' Frobenius norm (``kz="frobenius"``,
          the authors' code) or largest absolute value (``kz="max_abs"``, the text, eq. 6);
        - m is the batch size, k the number of classes, :math:`K_a = \|a^{[L]}\|_2`
          and :math:`\|y\|_2` the batch's outputs and targets (mse only);
        - :math:`c_\text{loss}` is ``loss_scale``: 1 for the derived loss (the batch
          mean; ½·MSE), else the factor your loss applies (``nn.MSELoss()``: 2);
        - λ is the largest ``weight_decay`` of the param groups and max‖w‖ the
          largest norm of one parameter tensor (biases and BatchNorm included).

    When the rate is set (the states are drawn in docs/architecture.md):
        - warm start: the very first rate comes from the first batch itself,
          measured in its own forward and applied just before the first
          ``optimizer.step()`` (an optimizer step pre-hook): the authors' epoch-0 rate.
        - ``recompute="epoch"`` (the paper): :meth:`epoch_end` sets the next
          epoch's rate from this epoch's running maxima of K_z (and K_a, ‖y‖;
          m = the largest batch) with the weights as they stand.
        - ``recompute="step"``: each step's L sets the rate of the next step.
        - ``fixed_after=n``: after n epochs the rate stops changing (the paper's fixed run).
        - ``exact_protocol=True``: at each epoch's start an extra eval-mode,
          no-grad pass over ``loader`` gives the largest K_z over batches
          (:meth:`measure_epoch`; records say ``kz_mode="eval"``).  Beware
          BatchNorm/Dropout before the last layer: eval-mode K_z can be ~100×
          below the train-mode value, and the rate then sits at ``max_lr``.
        - ``variant_optimizer``: the follow-up paper's momentum, RMSprop and Adam
          rates (:mod:`lipschitz_lab.optim_variants`, options in ``ema``).

    Nothing in a step waits for the device: the statistics, L and the rate stay
    device tensors, the rate is written into ``group["lr"]`` as a 0-d tensor
    where the optimizer takes one (:mod:`lipschitz_lab.scheduler.rate`), and the
    records are decoded in batches every ``flush_every`` steps
    (:class:`~lipschitz_lab.steplog.StepLog`): subscribers get every record, in
    order, a few steps late.  NaN or inf raises
    :class:`~lipschitz_lab.errors.DivergenceError` naming the first bad step and
    the quantity, at the flush that reads it.  A loss that is not the derived one
    (:mod:`lipschitz_lab.probe.scale`) raises
    :class:`~lipschitz_lab.errors.LossScaleError` the same way.

    The training loop::

        sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10)
        crit = sched.wrap_loss(criterion)   # targets: mse's ||y||, the loss-scale check
        for epoch in range(epochs):
            for x, y in loader:
                out = model(x); loss = crit(out, y); loss.backward()
                opt.step(); sched.step(); opt.zero_grad()   # step() reads .grad
            sched.epoch_end()

    Instead of ``wrap_loss``, call ``sched.observe(y)`` once per step.  Run
    validation forwards under ``torch.no_grad()`` (they are not measured).

    Records: the fields are defined in :mod:`lipschitz_lab.records` (``lr`` there).
    :attr:`last_record` and :meth:`get_last_lr` flush first, so they wait for the
    device: call them when you need the numbers, not every step.

    Reference: R. Yedida, S. Saha, "A novel adaptive learning rate scheduler
    for deep neural networks", arXiv:1902.07399 (2019).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, loss: str, *,
                 num_classes: int | None = None, bound: str = "paper", kz: str = "frobenius",
                 recompute: str = "epoch", fixed_after: int | None = None,
                 min_lr: float | None = 1e-6, max_lr: float | None = 10.0, eps: float | None = None,
                 loss_scale: float = 1.0, layer: str | None = None, exact_protocol: bool = False,
                 loader: Iterable | None = None, variant_optimizer: str = "sgd",
                 ema: EMAOptions = EMAOptions(), smooth: SmoothOptions = SmoothOptions(),
                 measure_beta: bool | None = None, log: StepLog | None = None, flush_every: int = 32,
                 last_epoch: int = -1):
        checks.check_arguments(loss=loss, bound=bound, kz=kz, recompute=recompute, min_lr=min_lr,
                                 max_lr=max_lr, exact_protocol=exact_protocol, fixed_after=fixed_after,
                                 variant_optimizer=variant_optimizer, loss_scale=loss_scale)
        self.needs = bound_inputs(loss)
        checks.check_loss_inputs(loss, self.needs, num_classes, eps)
        self.model, self.loss, self.bound, self.kz = model, loss, bound, kz
        self.num_classes = int(num_classes) if num_classes is not None else None
        self.eps, self.recompute, self.min_lr, self.max_lr = eps, recompute, min_lr, max_lr
        self.fixed_after, self.loss_scale = fixed_after, float(loss_scale)
        self.exact_protocol, self.loader, self.variant_optimizer = exact_protocol, loader, variant_optimizer
        self.ema_options, self.smooth = ema, smooth
        self._ema = BoundEMA(variant_optimizer, beta=ema.beta, beta1=ema.beta1, beta2=ema.beta2,
                             eps=ema.eps, bias_correction=ema.bias_correction)
        self.variants = [v for v in VARIANTS if checks.defined(loss, v)]   # no paper bound for some losses
        if bound != "smooth" and bound not in self.variants:
            raise ValueError(f"the paper gives no bound for loss={loss!r}; use bound='corrected' or 'strict'")
        self.momentum = max(float(g.get("momentum", 0.0) or 0.0) for g in optimizer.param_groups)
        checks.check_optimizer(optimizer, variant_optimizer)
        measure_beta = bound == "smooth" if measure_beta is None else measure_beta
        self._check = ScaleCheck(loss, **checks.loss_params(self.needs, num_classes, eps))
        self._check.armed = True             # step 0 is a check step
        self.probe = Probe(model, layer, sigma=smooth.sigma if measure_beta else None,
                           power_iters=smooth.power_iters, scale_check=self._check)
        self.log = log if log is not None else StepLog(flush_every)
        self.layerwise, self.group_layer = checks.layerwise(model, optimizer, bound, recompute, smooth)
        self._betas: torch.Tensor | None = None   # layerwise: β per layer of the rate in force
        self.lr_mode = lr_mode(optimizer)
        if self.lr_mode == "tensor":
            tensorize(optimizer)
        self.epoch, self.step_index = 0, 0
        self.state = "unset"                 # of the rate: unset -> from_batch -> set (-> frozen)
        self._rate: torch.Tensor | None = None   # [lr, K_z, L, clamp code], float64, on the device
        self._rate_info: dict[str, Any] = {"kz_mode": None, "source": None}
        self._pending = None                 # the batch read early, at the warm start
        self._stepped = False                # optimizer.step() ran since the last step()
        self._warned: set[str] = set()
        self.last_measurement: dict[str, Any] | None = None
        self._pre_hook = optimizer.register_step_pre_hook(self._before_optimizer_step)
        self.optimizer = optimizer
        if exact_protocol and loader is not None and last_epoch == -1:
            self.measure_epoch(loader)      # epoch 0: the initial weights, as the authors do
        super().__init__(optimizer, last_epoch)

    # -- the bound and the rate --------------------------------------------------
    def _lam(self) -> float:   # λ: the largest weight decay of the groups
        return max(float(g.get("weight_decay", 0.0) or 0.0) for g in self.optimizer.param_groups)

    def _params(self, stats_K_a, stats_y) -> dict[str, Any]:
        extra = {"k": self.num_classes, "eps": self.eps, "K_a": stats_K_a, "y_norm": stats_y}
        return {n: extra[n] for n in self.needs}

    def bound_value(self, variant: str, stats: dict[str, Any], lam: float, w_max):
        """L of ``variant`` for plain-number (or tensor) statistics, ``loss_scale`` included."""
        K_z, m = stats[f"K_z_{self.kz}"], stats["m"]
        params = self._params(stats.get("K_a"), stats.get("y_norm"))
        L = lipschitz_bound(self.loss, variant, K_z=K_z, m=m, lam=lam, w_max=w_max, kz=self.kz, **params)
        if self.loss_scale == 1.0:
            return L
        L0 = lipschitz_bound(self.loss, variant, K_z=K_z, m=m, kz=self.kz, **params)
        return self.loss_scale * L0 + (L - L0)

    def beta_value(self, stats: dict[str, Any], lam: float):
        r"""β = loss_scale·S₂·σ_max([A, 1])² + λ, or None when σ_max was not measured."""
        sigma = stats.get("sigma_max")
        if sigma is None:
            return None
        S2 = smoothness_bound(self.loss, m=stats["m"], **{n: v for n, v in self._params(None, None).items()
                                                          if n in ("k", "eps")})
        return self.loss_scale * S2 * sigma * sigma + lam

    def _set_rate(self, stats: dict[str, Any], w_max, kz_mode: str, source: str) -> None:
        """The rate from statistics (device tensors or floats), written into the optimizer."""
        self._rate_info = {"kz_mode": kz_mode, "source": source}
        if self.layerwise is not None:
            self._rate, rates = transitions.layer_rates(self, stats, self._lam())
            write_group_rates(self.optimizer, rates, self.lr_mode)
            return
        self._rate = transitions.rate_vector(self, stats, w_max, self._lam())
        write_rate(self.optimizer, self._rate[0], self.lr_mode)

    def get_lr(self) -> list[float]:
        """The rate of each group: ``lr_scale`` (default 1) times the current 1/L (syncs)."""
        if self._rate is None:
            return [float(g["lr"]) for g in self.optimizer.param_groups]
        rate = float(self._rate[0])
        return [rate * g.get("lr_scale", 1.0) for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The groups' rates as floats (syncs: call it when you need the number)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    # -- measuring --------------------------------------------------------------
    def observe(self, targets: torch.Tensor) -> None:
        """Give this step's targets (mse needs ||y||; the loss-scale check uses them); once per step."""
        self.probe.observe_targets(targets)

    def wrap_loss(self, criterion: Callable) -> Callable:
        """``criterion`` that also calls :meth:`observe` with its target.

        A torch criterion whose ``reduction`` tells its scale (``nn.MSELoss()`` for
        ``mse``: 2; ``reduction="sum"``: m) is checked here, before the first step.
        """
        checks.check_criterion(criterion, self.loss, self.loss_scale, self.eps)

        def loss_fn(output, target, *args, **kwargs):
            self.observe(target)
            return criterion(output, target, *args, **kwargs)
        return loss_fn

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        # w_max of the weights behind this gradient; then, once, the warm start
        self._stepped = True
        self.probe.snapshot_w_max()
        if self.state != "unset":
            if self._rate is not None and self.layerwise is None:
                write_rate(self.optimizer, self._rate[0], self.lr_mode)   # a changed lr_scale takes effect
            return
        if self._pending is None and self.probe.has_batch():
            self._pending = self.probe.read_device()
            self._warm_start(self._pending)

    def _warm_start(self, stats) -> None:
        self._set_rate(transitions.device_stats(stats, self.kz), stats.values[6], "train", "warm start")
        self.state = "from_batch"

    def measure_epoch(self, loader: Iterable | None = None) -> dict[str, Any]:
        """The authors' protocol: eval-mode, no-grad pass over ``loader``; the
        largest K_z over its batches sets the rate from now on (``kz_mode="eval"``).  Syncs."""
        self.last_measurement = transitions.measure(self, self.loader if loader is None else loader)
        return self.last_measurement

    # -- the scheduler protocol ------------------------------------------------
    def step(self, epoch: int | None = None) -> None:
        """Measure this step, queue its record, and set the next rate (step mode).

        Call after ``optimizer.step()`` and before ``optimizer.zero_grad()``."""
        if self._is_initial:                 # the base constructor's call: no batch yet
            self._step_count = getattr(self, "_step_count", 0) + 1
            self._last_lr = self.get_last_lr()
            return
        if epoch is not None:
            raise ValueError(f"LipschitzLR.step() takes no epoch (got epoch={epoch!r}); call epoch_end()")
        transitions.step(self)

    @property
    def last_record(self) -> Record | None:
        """The newest step record.  Flushes the log first, so it waits for the device."""
        self.log.flush(wait=True)
        return self.log.last

    def flush(self) -> list[Record]:
        """Decode every queued record and deliver it to the subscribers (waits for the device)."""
        return self.log.flush(wait=True)

    def epoch_end(self) -> None:
        """Close the epoch; with ``recompute="epoch"`` set the next epoch's rate
        (the exact protocol: a pass over ``loader``).  Call once per epoch."""
        transitions.epoch_end(self)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(record)`` for every step record, in order (a few steps late); returns
        a function that unsubscribes."""
        self.log.sinks.append(fn)
        return lambda: self.unsubscribe(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        if fn in self.log.sinks:
            self.log.sinks.remove(fn)

    def close(self) -> None:
        """Deliver the queued records; remove the probe's hook and the optimizer pre-hook."""
        try:
            self.log.flush(wait=True)
        finally:
            self.probe.detach()
            self._pre_hook.remove()
            if self.layerwise is not None:
                self.layerwise.detach()

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only: no model, hook, loader or tensor (``weights_only`` loads it).  Syncs."""
        return transitions.state_dict(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        transitions.load_state_dict(self, state_dict)

    # -- helpers ----------------------------------------------------------------
    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

