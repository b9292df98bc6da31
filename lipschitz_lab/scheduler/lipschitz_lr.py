r"""LipschitzLR: the learning rate lr = 1/L of Yedida & Saha (2019), as a torch scheduler."""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from lipschitz_lab.probe import Probe
from lipschitz_lab.probe.scale import ScaleCheck
from lipschitz_lab.scheduler import checks, saved
from lipschitz_lab.scheduler.instruments import check_sharpness, curvature_monitor
from lipschitz_lab.scheduler.options import CurvatureOptions, EMAOptions, SmoothOptions
from lipschitz_lab.scheduler.rate import RATE, device_of
from lipschitz_lab.scheduler.rule import RateRule
from lipschitz_lab.scheduler.scaler import grad_scale_of
from lipschitz_lab.scheduler.state import RateState
from lipschitz_lab.scheduler.stream import RecordStream
from lipschitz_lab.steplog import StepLog, deliver_at_exit

__all__ = ["LipschitzLR"]


class LipschitzLR(RecordStream, LRScheduler):
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
          ``"curvature"`` and ``"directional"`` set it from the whole network's measured
          Hessian instead (``sharpness_every``, :class:`~.options.CurvatureOptions`, docs/curvature.md);
        - :math:`K_z` is the penultimate activations' Frobenius norm (``kz="frobenius"``,
          the authors' code) or largest absolute value (``kz="max_abs"``, the text, eq. 6);
        - m is the number of terms the loss averages: the batch size, or for a sequence
          model's (B, T, V) logits the tokens whose targets are not ignored (negative targets,
          torch's ``ignore_index=-100``; all B·T positions when no targets reach the scheduler);
          k the number of classes, :math:`K_a = \|a^{[L]}\|_2` and :math:`\|y\|_2` the
          batch's outputs and targets (mse only);
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

    Instead of ``wrap_loss``, call ``sched.observe(y)`` once per forward.  Run
    validation forwards under ``torch.no_grad()`` (they are not measured).  With fp16 and
    ``torch.amp.GradScaler``, pass ``scaler=scaler`` (its scale is divided out of what the
    check sees, on the device; a step the scaler skips is not measured).  The loss-scale
    check (:mod:`lipschitz_lab.probe.scale`) always holds |∂E/∂z| per entry to S/m; with the
    targets it also fits the exact scale, label smoothing included.  Records are delivered
    at every ``flush_every``-th step, :meth:`epoch_end`, :meth:`state_dict`, :meth:`close`,
    and at exit for a loop that calls none of them.  ``sharpness_every=N`` adds the curvature
    instruments (λ_max, edge, dir_curv, α) to every N-th record; it needs ``wrap_loss``.

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
                 measure_beta: bool | None = None, scaler=None, sharpness_every: int | None = None,
                 curvature: CurvatureOptions = CurvatureOptions(), log: StepLog | None = None,
                 flush_every: int = 32, last_epoch: int = -1):
        checks.check_arguments(loss=loss, bound=bound, kz=kz, recompute=recompute, min_lr=min_lr,
                               max_lr=max_lr, exact_protocol=exact_protocol, fixed_after=fixed_after,
                               variant_optimizer=variant_optimizer, loss_scale=loss_scale)
        checks.check_loss_inputs(loss, checks.bound_inputs(loss), num_classes, eps)
        self.model, self.loss, self.bound, self.kz = model, loss, bound, kz
        self.num_classes = int(num_classes) if num_classes is not None else None
        self.eps, self.recompute, self.fixed_after = eps, recompute, fixed_after
        self.exact_protocol, self.loader, self.scaler = exact_protocol, loader, scaler
        self.smooth, self._warned = smooth, set()
        self.sharpness_every = check_sharpness(sharpness_every, bound)
        momentum = max(float(g.get("momentum", 0.0) or 0.0) for g in optimizer.param_groups)
        self.rule = RateRule(loss, bound, kz, num_classes=self.num_classes, eps=eps,
                             loss_scale=float(loss_scale), min_lr=min_lr, max_lr=max_lr,
                             variant_optimizer=variant_optimizer, ema=ema, smooth=smooth,
                             momentum=momentum, curvature=curvature)
        checks.check_optimizer(optimizer, variant_optimizer)
        checks.check_momentum(optimizer, variant_optimizer, bound, self.warn_once)
        measure_beta = bound == "smooth" if measure_beta is None else measure_beta
        check = ScaleCheck(loss, softmax=checks.is_softmax(loss), grad_scale=grad_scale_of(scaler),
                           **checks.loss_params(self.rule.needs, num_classes, eps))
        self.probe = Probe(model, layer, sigma=smooth.sigma if measure_beta else None,
                           power_iters=smooth.power_iters, scale_check=check,
                           grad_scale=grad_scale_of(scaler))
        self.log = log if log is not None else StepLog(flush_every)
        layerwise, group_layer = checks.layerwise(model, optimizer, bound, recompute, smooth)
        self.rate_state = RateState(self.rule, self.probe, optimizer, self.log, recompute=recompute,
                              fixed_after=fixed_after, layerwise=layerwise, group_layer=group_layer,
                              skipped=(lambda: True) if scaler is not None else None, warn=self.warn_once)
        self.last_measurement: dict[str, Any] | None = None
        self.pre_hook = optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: self.rate_state.before_optimizer_step())
        self.optimizer = optimizer
        if log is None:                      # our own log: its last records reach the sinks at exit too
            self._finalizer = weakref.finalize(self, deliver_at_exit, self.log)
        if exact_protocol and loader is not None and last_epoch == -1:
            self.measure_epoch(loader)      # epoch 0: the initial weights, as the authors do
        super().__init__(optimizer, last_epoch)

    # -- what the state says --------------------------------------------------------------
    @property
    def state(self) -> str:
        """The rate's state: unset, from_batch, set or frozen (docs/architecture.md)."""
        return self.rate_state.name

    @property
    def epoch(self) -> int:
        return self.rate_state.epoch

    @property
    def step_index(self) -> int:
        return self.rate_state.step_index

    @property
    def variants(self) -> list[str]:
        return self.rule.variants

    @property
    def layerwise(self):
        return self.rate_state.layerwise

    # -- the bound and the rate --------------------------------------------------
    def bound_value(self, variant: str, stats: dict[str, Any], lam: float, w_max):
        """L of ``variant`` for plain-number (or tensor) statistics, ``loss_scale`` included."""
        return self.rule.L(variant, stats, lam, w_max)

    def beta_value(self, stats: dict[str, Any], lam: float):
        r"""β = loss_scale·S₂·σ_max([A, 1])² + λ, or None when σ_max was not measured."""
        return self.rule.beta_of(stats, lam)

    def get_lr(self) -> list[float]:
        """The rate of each group: ``lr_scale`` (default 1) times the current 1/L (syncs)."""
        if self.rate_state.rate is None:
            return [float(g["lr"]) for g in self.optimizer.param_groups]
        rate = float(RATE.get(self.rate_state.rate, "lr"))
        return [rate * g.get("lr_scale", 1.0) for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The groups' rates as floats (syncs: call it when you need the number)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    # -- measuring --------------------------------------------------------------
    def observe(self, targets: torch.Tensor) -> None:
        """This step's targets, once per forward: mse's ||y||, m without the ignored targets
        (padding), and the exact loss-scale check."""
        self.probe.observe_targets(targets)
        if self.rate_state.monitor is not None:
            self.rate_state.monitor.observe(targets)

    def wrap_loss(self, criterion: Callable) -> Callable:
        """``criterion`` that also calls :meth:`observe` with its target.

        A torch criterion whose settings tell its scale (``nn.MSELoss()`` for ``mse``: 2;
        ``reduction="sum"``: m), its label smoothing or its class weights is checked here,
        before the first step.
        """
        checks.check_criterion(criterion, self.loss, self.rule.loss_scale, self.eps)
        if self.sharpness_every is not None and self.rate_state.monitor is None:   # the batch it needs
            self.rate_state.monitor = curvature_monitor(self.model, self.optimizer, criterion,
                                                        self.sharpness_every, self.rule.curvature)

        def loss_fn(output, target, *args, **kwargs):
            self.observe(target)
            return criterion(output, target, *args, **kwargs)
        return loss_fn

    def measure_epoch(self, loader: Iterable | None = None) -> dict[str, Any]:
        """The authors' protocol: eval-mode, no-grad pass over ``loader``; the
        largest K_z over its batches sets the rate from now on (``kz_mode="eval"``).  Syncs."""
        self.last_measurement = self.rate_state.measure(self.loader if loader is None else loader)
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
        self.last_epoch += 1
        self._step_count += 1
        self.rate_state.step()

    def epoch_end(self) -> None:
        """Deliver the epoch's records (an error in them is raised here), then close the epoch; with
        ``recompute="epoch"`` set the next epoch's rate (the exact protocol: a pass over ``loader``)."""
        self.log.flush(wait=True)
        self.rate_state.epoch_end(self.loader, self.exact_protocol)

    def close(self) -> None:
        """Deliver the queued records; remove the probe's hook and the optimizer pre-hook."""
        try:
            self.log.flush(wait=True)
        finally:
            self.probe.detach()
            self.pre_hook.remove()
            if self.rate_state.monitor is not None:
                self.rate_state.monitor.close()
            if self.layerwise is not None:
                self.layerwise.detach()

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only: no model, hook, loader or tensor (``weights_only`` loads it).
        Delivers the queued records first (an error in them is raised here).  Syncs."""
        self.log.flush(wait=True)
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count,
                "base_lrs": [float(v) if isinstance(v, torch.Tensor) else v for v in self.base_lrs],
                "_last_lr": self.get_last_lr(), **self.rate_state.state_dict(),
                "config": saved.config_of(self)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = saved.upgrade_state(state_dict)
        differ = {k: v for k, v in state.get("config", {}).items() if saved.config_of(self).get(k) != v}
        if differ:
            warnings.warn(f"LipschitzLR state was saved with a different configuration: {differ}",
                          stacklevel=2)
        self.last_epoch, self._step_count = state["last_epoch"], state["_step_count"]
        self.base_lrs, self._last_lr = list(state["base_lrs"]), list(state["_last_lr"])
        self.rate_state.load_state_dict(state, device_of(self.optimizer))

    # -- helpers ----------------------------------------------------------------
    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)
