r"""LipschitzLR: the learning rate lr = 1/L of Yedida & Saha (2019), as a torch scheduler."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from lipschitz_lab.bounds import (KZ_DEFINITIONS, LOSSES, VARIANTS, bound_inputs,
                                  learning_rate, lipschitz_bound)
from lipschitz_lab.optim_variants import BoundEMA
from lipschitz_lab.probe import DivergenceError, Probe
from lipschitz_lab.records import Record, Subscriber, step_record

__all__ = ["LipschitzLR", "RECOMPUTE"]

RECOMPUTE = ("epoch", "step")


class LipschitzLR(LRScheduler):
    r"""Sets the learning rate of every param group to the inverse of the
    Lipschitz bound of the loss, measured on the training batches.

    .. math::

        lr = \operatorname{clamp}\!\left(\frac{1}{L},\ \text{min\_lr},\ \text{max\_lr}\right),
        \qquad
        L = L_\text{bound}(K_z, m, k, K_a, \|y\|) + \lambda \max\|w\|

    where:
        - :math:`L_\text{bound}` is the generated bound of :mod:`lipschitz_lab.bounds`
          (``paper``: eqs. 9, 15, 20; ``corrected``; ``strict``);
        - :math:`K_z` is the penultimate activations' Frobenius norm (``kz="frobenius"``,
          the authors' code) or largest absolute value (``kz="max_abs"``, the text, eq. 6);
        - m is the batch size, k the number of classes, :math:`K_a = \|a^{[L]}\|_2`
          and :math:`\|y\|_2` the batch's outputs and targets (mse only);
        - λ is the largest ``weight_decay`` of the param groups and max‖w‖ the
          largest norm of one parameter tensor (biases and BatchNorm included).

    When the rate is set:
        - ``recompute="epoch"`` (the paper): the rate of epoch e is set by
          :meth:`epoch_end` from epoch e-1's running maxima of K_z (and K_a,
          ‖y‖; m = the largest batch) with the weights as they stand.
        - ``recompute="step"``: each step's L sets the rate of the next step.
        - warm start (both modes): the very first rate comes from the first
          batch itself, measured in its own forward and applied just before
          the first ``optimizer.step()`` (an optimizer step pre-hook), with the
          initial weights: the authors' epoch-0 rate, on one batch.
        - ``exact_protocol=True``: at each epoch's start an extra eval-mode,
          no-grad pass over ``loader`` (fixed order) gives the largest K_z over
          batches (:meth:`measure_epoch`; records say ``kz_mode="eval"``).
          Beware BatchNorm/Dropout before the last layer: eval-mode K_z can be
          ~100× below the train-mode value, and the rate then sits at ``max_lr``.
        - ``variant_optimizer``: momentum, RMSprop and Adam rates of the
          follow-up paper (:mod:`lipschitz_lab.optim_variants`).

    The training loop::

        sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10)
        crit = sched.wrap_loss(criterion)   # records ||y|| (mse needs it; else harmless)
        for epoch in range(epochs):
            for x, y in loader:
                out = model(x); loss = crit(out, y); loss.backward()
                opt.step(); sched.step(); opt.zero_grad()   # step() reads .grad
            sched.epoch_end()

    Instead of ``wrap_loss``, call ``sched.observe(y)`` once per step.  Run
    validation forwards under ``torch.no_grad()`` (they are not measured).
    With ``exact_protocol=True`` and no ``loader``, call
    ``sched.measure_epoch(eval_loader)`` at each epoch's start instead.

    Records: after each ``step()``, ``last_record`` is the step's plain-dict
    record (:mod:`lipschitz_lab.records`); :meth:`subscribe` delivers every
    record.  ``lr`` is the base rate that this step's update used (before
    ``lr_scale``), with ``clamped``, ``kz_mode``, ``K_z_rate`` and ``L_rate``
    describing how it was set; ``K_z``, ``L`` and ``L_paper``/``L_corrected``/
    ``L_strict`` are this batch's, with ``w_max`` of the weights that produced
    its gradient; ``lr_next`` is the rate set for the next step.

    A param group may carry ``lr_scale`` (its rate is ``lr_scale / L``); λ is
    the largest ``weight_decay`` of the groups.  NaN or inf in the statistics
    raises :class:`~lipschitz_lab.probe.DivergenceError` naming the step and
    the quantity, unless ``optimizer.step()`` did not run for that batch
    (AMP's ``GradScaler`` skipping an overflow): that step is not measured.

    Reference: R. Yedida, S. Saha, "A novel adaptive learning rate scheduler
    for deep neural networks", arXiv:1902.07399 (2019).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, loss: str, *,
                 num_classes: int | None = None, bound: str = "paper", kz: str = "frobenius",
                 recompute: str = "epoch", min_lr: float | None = 1e-6, max_lr: float | None = 10.0,
                 eps: float | None = None, layer: str | None = None, exact_protocol: bool = False,
                 loader: Iterable | None = None, variant_optimizer: str = "sgd",
                 beta: float = 0.9, beta1: float = 0.9, beta2: float = 0.999, ema_eps: float = 1e-8,
                 bias_correction: bool = False, last_epoch: int = -1):
        for field, value, choices in (("loss", loss, LOSSES), ("bound", bound, VARIANTS),
                                      ("kz", kz, KZ_DEFINITIONS), ("recompute", recompute, RECOMPUTE)):
            if value not in choices:
                raise ValueError(f"{field} must be one of {', '.join(choices)}; got {field}={value!r}")
        if exact_protocol and recompute != "epoch":
            raise ValueError(f"exact_protocol=True measures once per epoch; got recompute={recompute!r}")
        if min_lr is not None and max_lr is not None and not 0 < min_lr <= max_lr:
            raise ValueError(f"need 0 < min_lr <= max_lr; got min_lr={min_lr!r}, max_lr={max_lr!r}")
        self._needs = bound_inputs(loss)
        if "k" in self._needs and (num_classes is None or int(num_classes) < 2):
            raise ValueError(f"num_classes (k >= 2) is required for loss={loss!r}; got num_classes={num_classes!r}")
        if "eps" in self._needs and eps is None:
            raise ValueError(f"eps (the label smoothing) is required for loss={loss!r}; got eps=None")
        self.model, self.loss, self.bound, self.kz = model, loss, bound, kz
        self.num_classes = int(num_classes) if num_classes is not None else None
        self.eps, self.recompute, self.min_lr, self.max_lr = eps, recompute, min_lr, max_lr
        self.exact_protocol, self.loader, self.variant_optimizer = exact_protocol, loader, variant_optimizer
        self._ema = BoundEMA(variant_optimizer, beta=beta, beta1=beta1, beta2=beta2, eps=ema_eps,
                             bias_correction=bias_correction)
        # the variants this loss has (the paper gives no label_smoothed_ce bound)
        self._variants = [v for v in VARIANTS if self._defined(v)]
        if bound not in self._variants:
            self._L(bound, {"K_z_frobenius": 1.0, "K_z_max_abs": 1.0, "m": 1, "K_a": 1.0, "y_norm": 0.0}, 0.0, 0.0)
        self._check_optimizer(optimizer)
        self.probe = Probe(model, layer)
        self.epoch, self._step_index = 0, 0
        self._rate: float | None = None     # the base rate in force (before lr_scale)
        self._rate_info: dict[str, Any] = {"K_z": None, "L": None, "clamped": None, "kz_mode": None, "source": None}
        self._rate_from_batch = False       # the rate in force came from the batch being stepped
        self._pending: dict[str, Any] | None = None
        self._opt_stepped = False           # optimizer.step() ran since the last step()
        self._last_epoch_max: dict[str, float] = {}
        self._subscribers: list[Subscriber] = []
        self._warned: set[str] = set()
        self.last_record: Record | None = None
        self.last_measurement: dict[str, Any] | None = None
        self._pre_hook = optimizer.register_step_pre_hook(self._before_optimizer_step)
        self.optimizer = optimizer
        if exact_protocol and loader is not None and last_epoch == -1:
            self.measure_epoch(loader)      # epoch 0: the initial weights, as the authors do
        super().__init__(optimizer, last_epoch)

    # -- the bound ------------------------------------------------------------
    def _defined(self, variant: str) -> bool:
        try:
            self._L(variant, {"K_z_frobenius": 1.0, "K_z_max_abs": 1.0, "m": 1, "K_a": 1.0, "y_norm": 0.0}, 0.0, 0.0)
        except ValueError:
            return False
        return True

    def _K_z(self, stats: dict[str, Any]) -> float:
        return stats[f"K_z_{self.kz}"]

    def _L(self, variant: str, stats: dict[str, Any], lam: float, w_max: float) -> float:
        extra = {"k": self.num_classes, "eps": self.eps, "K_a": stats.get("K_a"), "y_norm": stats.get("y_norm")}
        return float(lipschitz_bound(self.loss, variant, K_z=self._K_z(stats), m=stats["m"], lam=lam,
                                     w_max=w_max, kz=self.kz, **{n: extra[n] for n in self._needs}))

    def _lam(self) -> float:
        return max(float(g.get("weight_decay", 0.0) or 0.0) for g in self.optimizer.param_groups)

    def _set_rate(self, stats: dict[str, Any], w_max: float, kz_mode: str, source: str) -> None:
        # 1) L of the configured variant, and its lam*w_max part (the follow-up paper's L^2 drops it)
        lam = self._lam()
        L = self._L(self.bound, stats, lam, w_max)
        L_wd = L - self._L(self.bound, stats, 0.0, 0.0) if lam and w_max else 0.0
        # 2) the variant optimizer's denominator D (D = L for plain SGD), then lr = 1/D clamped
        lr, clamped = learning_rate(self._ema.update(L, L_wd), min_lr=self.min_lr, max_lr=self.max_lr)
        K_z = self._K_z(stats)
        if K_z == 0 and clamped == "max_lr":
            clamped = "K_z=0"
        self._rate = lr
        self._rate_info = {"K_z": K_z, "L": L, "clamped": clamped, "kz_mode": kz_mode, "source": source}

    def _apply_rate(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                         for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """The rate of each group: ``lr_scale`` (default 1) times the current 1/L."""
        if self._rate is None:
            return [g["lr"] for g in self.optimizer.param_groups]
        return [self._rate * g.get("lr_scale", 1.0) for g in self.optimizer.param_groups]

    # -- measuring ------------------------------------------------------------
    def observe(self, targets: torch.Tensor) -> None:
        """Give this step's targets (mse needs ||y||); call once per step."""
        self.probe.observe_targets(targets)

    def wrap_loss(self, criterion: Callable) -> Callable:
        """``criterion`` that also calls :meth:`observe` with its target."""
        def loss_fn(output, target, *args, **kwargs):
            if "y_norm" in self._needs:
                self.observe(target)
            return criterion(output, target, *args, **kwargs)
        return loss_fn

    def _read(self) -> dict[str, Any] | None:
        stats = self.probe.read(step=self._step_index, strict=False)
        if stats is None:
            return None
        if stats["nonfinite"]:
            if self._opt_stepped:
                raise DivergenceError(stats["nonfinite"])
            # optimizer.step() never ran: AMP's GradScaler skipped an overflowing step
            self._warn_once("skip", f"{stats['nonfinite']}, and optimizer.step() was skipped "
                            "(GradScaler?): the step is not measured")
            return None
        if "y_norm" in self._needs and stats["y_norm"] is None:
            raise ValueError(f"y_norm is required for loss={self.loss!r}: call scheduler.observe(y) "
                             "each step or use scheduler.wrap_loss(criterion)")
        if stats["grad_last"] is None:
            self._warn_once("grad", "no gradients at scheduler.step(): call it before optimizer.zero_grad()")
        return stats

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        # w_max of the weights that produced this gradient; then, once, the warm start:
        # the first rate from the first batch, before the first update
        self._opt_stepped = True
        self.probe.snapshot_w_max()
        if self._rate is not None:
            self._apply_rate()               # a changed lr_scale takes effect at this update
            return
        if self._pending is not None:
            return
        self._pending = self._read()
        if self._pending is not None:
            self._set_rate(self._pending, self._pending["w_max"], "train", "warm start")
            self._rate_from_batch = True
            self._apply_rate()

    def measure_epoch(self, loader: Iterable | None = None) -> dict[str, Any]:
        """The authors' protocol: eval-mode, no-grad pass over ``loader``; the
        largest K_z over its batches sets the rate from now on (``kz_mode="eval"``)."""
        loader = self.loader if loader is None else loader
        if loader is None:
            raise ValueError("loader is required for measure_epoch (or give loader= to LipschitzLR)")
        stats = self.probe.measure(loader, label=f"epoch {self.epoch} measurement")
        w_max = self.probe.w_max()
        self._set_rate(stats, w_max, "eval", "exact protocol")
        self._rate_from_batch = False
        self._apply_rate()
        self.last_measurement = {**stats, "w_max": w_max, "lr": self._rate, **self._rate_info}
        return self.last_measurement

    # -- the scheduler protocol ------------------------------------------------
    def step(self, epoch: int | None = None) -> None:
        """Read this step's statistics, emit its record, and set the next rate.

        Call after ``optimizer.step()`` and before ``optimizer.zero_grad()``."""
        if self._is_initial:                 # the base constructor's call: no batch yet
            super().step()
            return
        if epoch is not None:
            raise ValueError(f"LipschitzLR.step() takes no epoch (got epoch={epoch!r}); call epoch_end()")
        had_forward = self.probe.has_batch() or self._pending is not None
        stats, self._pending = (self._pending or self._read()), None
        self._opt_stepped = False
        if stats is None:
            if not had_forward:
                self._warn_once("forward", "scheduler.step() without a measured training forward; rate unchanged")
            super().step()
            return
        if self._rate is None:               # no optimizer.step() hook fired: start from this batch
            self._set_rate(stats, stats["w_max"], "train", "warm start")
            self._rate_from_batch = True
        scale = float(self.optimizer.param_groups[0].get("lr_scale", 1.0))   # the rate group 0 really used
        lr, info = self._rate * scale, dict(self._rate_info)
        lam, w_max = self._lam(), stats["w_max"]
        Ls = {v: (self._L(v, stats, lam, w_max) if v in self._variants else None) for v in VARIANTS}
        if info["kz_mode"] == "eval" and info["K_z"] is not None and self._K_z(stats) > 10 * info["K_z"]:
            ratio = self._K_z(stats) / max(info["K_z"], 1e-300)
            self._warn_once("eval", f"eval-mode K_z={info['K_z']:.4g} is {ratio:.0f}x below this batch's "
                            f"train-mode K_z={self._K_z(stats):.4g} (BatchNorm or Dropout before the last "
                            f"layer?): the exact protocol's rate is too large; max_lr={self.max_lr} caps it")
        if self.recompute == "step" and not self._rate_from_batch:
            self._set_rate(stats, w_max, "train", "step")
        self._rate_from_batch = False
        super().step()                       # groups <- get_lr()
        record = step_record(
            step=self._step_index, epoch=self.epoch, lr=lr, K_z=self._K_z(stats), L=Ls[self.bound],
            bound=self.bound, grad_last=stats["grad_last"], grad_layers=stats["grad_layers"],
            clamped=info["clamped"], L_paper=Ls["paper"], L_corrected=Ls["corrected"], L_strict=Ls["strict"],
            kz=self.kz, kz_mode=info["kz_mode"], K_z_rate=info["K_z"], L_rate=info["L"],
            rate_source=info["source"], lr_next=self._rate * scale, w_max=w_max, lam=lam, m=stats["m"],
            k=self.num_classes if "k" in self._needs else None,
            K_a=stats["K_a"] if "K_a" in self._needs else None,
            y_norm=stats["y_norm"] if "y_norm" in self._needs else None,
            K_z_frobenius=stats["K_z_frobenius"], K_z_max_abs=stats["K_z_max_abs"],
            variant_optimizer=self.variant_optimizer)
        self._step_index += 1
        self.last_record = record
        for fn in list(self._subscribers):
            fn(record)

    def epoch_end(self) -> dict[str, Any]:
        """Close the epoch; with ``recompute="epoch"`` set the next epoch's rate
        (the exact protocol: a pass over ``loader``).  Call once per epoch."""
        finished = self.probe.reset_epoch()
        if finished:
            self._last_epoch_max = finished
        self.epoch += 1
        if self.recompute == "epoch":
            if self.exact_protocol:          # without a loader the trainer calls measure_epoch()
                if self.loader is not None:
                    self.measure_epoch(self.loader)
            elif finished:
                self._set_rate(finished, self.probe.w_max(), "train", "epoch")
                self._rate_from_batch = False
                self._apply_rate()
        return {"epoch": self.epoch, "lr": self._rate, **self._rate_info, "previous_epoch_max": finished}

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(record)`` after every step; returns a function that unsubscribes."""
        self._subscribers.append(fn)
        return lambda: self.unsubscribe(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        if fn in self._subscribers:
            self._subscribers.remove(fn)

    def close(self) -> None:
        """Remove the probe's hook and the optimizer pre-hook."""
        self.probe.detach()
        self._pre_hook.remove()

    def _config(self) -> dict[str, Any]:
        return {"loss": self.loss, "bound": self.bound, "kz": self.kz, "recompute": self.recompute,
                "num_classes": self.num_classes, "eps": self.eps, "min_lr": self.min_lr, "max_lr": self.max_lr,
                "exact_protocol": self.exact_protocol, "variant_optimizer": self.variant_optimizer,
                "layer": self.probe.layer_name}

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only: no model, hook, loader or tensor (``weights_only`` loads it)."""
        def plain(v):
            return float(v) if isinstance(v, torch.Tensor) else v
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count,
                "base_lrs": [plain(v) for v in self.base_lrs], "_last_lr": [plain(v) for v in self._last_lr],
                "epoch": self.epoch, "step_index": self._step_index, "rate": self._rate,
                "rate_info": dict(self._rate_info), "rate_from_batch": self._rate_from_batch,
                "epoch_max": dict(self.probe.epoch_max), "last_epoch_max": dict(self._last_epoch_max),
                "ema": self._ema.state_dict(), "config": self._config()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        differ = {k: v for k, v in state_dict.get("config", {}).items() if self._config().get(k) != v}
        if differ:
            warnings.warn(f"LipschitzLR state was saved with a different configuration: {differ}", stacklevel=2)
        self.last_epoch, self._step_count = state_dict["last_epoch"], state_dict["_step_count"]
        self.base_lrs, self._last_lr = list(state_dict["base_lrs"]), list(state_dict["_last_lr"])
        self.epoch, self._step_index = state_dict["epoch"], state_dict["step_index"]
        self._rate, self._rate_info = state_dict["rate"], dict(state_dict["rate_info"])
        self._rate_from_batch = state_dict["rate_from_batch"]
        self.probe.epoch_max = dict(state_dict["epoch_max"])
        self._last_epoch_max = dict(state_dict["last_epoch_max"])
        self._ema.load_state_dict(state_dict["ema"])
        if self._rate is not None:
            self._apply_rate()

    # -- helpers ----------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        v = self.variant_optimizer
        momentum = any(g.get("momentum", 0) for g in optimizer.param_groups)
        fits = {"sgd": True, "momentum": isinstance(optimizer, torch.optim.SGD) and momentum,
                "rmsprop": isinstance(optimizer, torch.optim.RMSprop),
                "adam": isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))}[v]
        if not fits:
            warnings.warn(f"variant_optimizer={v!r} expects {'SGD with momentum' if v == 'momentum' else v} "
                          f"but the optimizer is {type(optimizer).__name__}", stacklevel=3)
