"""The baselines that find their own rate, registered as policies of :mod:`lipschitz_lab.policies`.

Each baseline goes through its own package, built as that package documents:

==================  ==========================================  =============================
policy              optimizer                                   the rate in force
==================  ==========================================  =============================
lr_range_test       torch-lr-finder's ``range_test``, then SGD   the picked constant lr
lr_range_test_min10 ... picking min-loss lr / 10                 the picked constant lr
prodigy             ``prodigyopt.Prodigy`` (lr = 1)             lr · d
dadapt_sgd          ``dadaptation.DAdaptSGD`` (lr = 1, β = 0.9)  lr · d
dog                 ``dog.DoG``, evaluated at its average        η_t = max‖x_i − x_0‖ / √Σ‖g_i‖²
schedulefree_sgd    ``schedulefree.SGDScheduleFree``             lr (warm-up 5 % of the steps)
==================  ==========================================  =============================
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import math

import numpy as np
import torch
from torch import nn

from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.policies.base import Policy, PolicyContext, make_optimizer, register_policy

__all__ = ["BASELINES", "range_test", "suggest_lr"]

#: the policy names this module registers
BASELINES = ("lr_range_test", "lr_range_test_min10", "prodigy", "dadapt_sgd", "dog", "schedulefree_sgd")

# the range test sweeps this span in this many iterations (torch-lr-finder's defaults: end_lr=10, 100)
RANGE_START_LR, RANGE_END_LR, RANGE_ITERS = 1e-5, 10.0, 100


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# -- the LR range test (Smith 2017), through torch-lr-finder -------------------------------
def suggest_lr(lrs: list[float], losses: list[float], rule: str = "steepest") -> float:
    r"""Pick a rate from a range test's (lr, smoothed loss) curve.

    .. math::

        \text{steepest:}\quad lr = lr_{i^*},\ i^* = \arg\min_i \frac{d\,\text{loss}_i}{d i}
        \qquad\text{min10:}\quad lr = \tfrac{1}{10}\, lr_{\arg\min_i \text{loss}_i}

    ``steepest`` is torch-lr-finder's own suggestion (``LRFinder.plot``: the
    smallest ``np.gradient`` after trimming the first 10 % and last 5 % of the
    points; the package trims 10 and 5, too many for a short test);
    ``min10`` is fastai's rule of thumb.  Non-finite losses are dropped first.
    """
    lrs_a, losses_a = np.asarray(lrs, float), np.asarray(losses, float)
    keep = np.isfinite(losses_a)
    lrs_a, losses_a = lrs_a[keep], losses_a[keep]
    if len(lrs_a) < 3:
        raise ValueError(f"range test gave {len(lrs_a)} finite losses; need at least 3 to pick an lr")
    if rule == "min10":
        return float(lrs_a[int(np.argmin(losses_a))] / 10)
    if rule != "steepest":
        raise ValueError(f"rule must be steepest or min10; got rule={rule!r}")
    start, end = max(1, len(lrs_a) // 10), max(1, len(lrs_a) // 20)
    if len(lrs_a) - start - end < 3:
        start, end = 0, 0
    lrs_a, losses_a = lrs_a[start:len(lrs_a) - end], losses_a[start:len(losses_a) - end]
    return float(lrs_a[int(np.argmin(np.gradient(losses_a)))])


def _finder_loader(loader):
    """torch-lr-finder takes a DataLoader or a ``TrainDataLoaderIter``; wrap any other iterable."""
    from torch_lr_finder import TrainDataLoaderIter
    if isinstance(loader, torch.utils.data.DataLoader):
        return loader
    return TrainDataLoaderIter(loader)   # auto_reset=True: restarts the loader when it runs out


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer, criterion, loader, device,
               num_iter: int) -> dict[str, list[float]]:
    """Run ``LRFinder.range_test`` (exponential sweep 1e-5 -> 10) and restore the model.

    Returns the history ``{"lr": [...], "loss": [...]}``.  The package prints and
    draws a tqdm bar; both are swallowed so a notebook cell stays clean.
    """
    from torch_lr_finder import LRFinder
    finder = LRFinder(model, optimizer, criterion, device=device)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            finder.range_test(_finder_loader(loader), start_lr=RANGE_START_LR, end_lr=RANGE_END_LR,
                              num_iter=num_iter)
    finally:
        finder.reset()     # the weights (and BatchNorm statistics) as they were before the test
        model.zero_grad(set_to_none=True)   # and no gradient of its last iteration left in .grad
    return finder.history


def _lr_range_test(config: TrainConfig, model: nn.Module, ctx: PolicyContext, rule: str) -> Policy:
    # 1) sweep on the training loader for the package's 100 iterations: shorter sweeps (one
    #    digits epoch is ~25) see the loss move only near the divergence and pick too high
    num_iter = RANGE_ITERS
    probe_opt = make_optimizer(config.optimizer, model.parameters(), RANGE_START_LR, config.weight_decay)
    history = range_test(model, probe_opt, ctx.criterion, ctx.train_loader, ctx.device, num_iter)
    # 2) pick the rate; 3) train at it from the restored initial weights with a fresh optimizer
    lr = suggest_lr(history["lr"], history["loss"], rule)
    optimizer = make_optimizer(config.optimizer, model.parameters(), lr, config.weight_decay)
    return Policy(optimizer, extra_steps=len(history["lr"]),
                  info={"range_test_lr": lr, "rule": rule, "range_test_iters": len(history["lr"]),
                        "range_test_lrs": [float(v) for v in history["lr"]],
                        "range_test_losses": [float(v) for v in history["loss"]]})


@register_policy("lr_range_test")
def lr_range_test(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """An LR range test picks a constant rate: the steepest descent of the loss."""
    return _lr_range_test(config, model, ctx, "steepest")


@register_policy("lr_range_test_min10")
def lr_range_test_min10(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """An LR range test picks a constant rate: a tenth of the rate at the smallest loss."""
    return _lr_range_test(config, model, ctx, "min10")


# -- parameter-free optimizers ---------------------------------------------------------------
def _plain_sgd_only(config: TrainConfig, policy: str) -> None:
    # these optimizers replace SGD/Adam; a different optimizer field would be silently ignored
    if config.optimizer != "sgd":
        raise ConfigError(f"optimizer={config.optimizer!r}: lr_policy={policy!r} brings its own optimizer; "
                          "leave optimizer at sgd")


@register_policy("prodigy")
def prodigy(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """Prodigy (Mishchenko & Defazio 2023), Adam-like; the package's defaults, lr = ``config.lr`` (1)."""
    from prodigyopt import Prodigy
    _plain_sgd_only(config, "prodigy")
    return Policy(Prodigy(model.parameters(), lr=config.lr, weight_decay=config.weight_decay))


@register_policy("dadapt_sgd")
def dadapt_sgd(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """D-Adaptation SGD (Defazio & Mishchenko 2023) with momentum 0.9, as in its paper's SGD runs."""
    from dadaptation import DAdaptSGD
    _plain_sgd_only(config, "dadapt_sgd")
    return Policy(DAdaptSGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay))


class _DoGPolicy(Policy):
    def current_lr(self) -> float:
        r"""The step size DoG is about to take (the trainer asks between backward and step).

        .. math::

            \eta_t = c\,\frac{\bar r_t}{\sqrt{G_t}}, \quad
            \bar r_t = \max(r_\epsilon,\ \max_{i \le t}\|x_i - x_0\|), \quad
            G_t = \sum_{i \le t} \|g_i + \lambda x_i\|^2 + \epsilon

        DoG keeps ``lr`` = c and computes η inside ``step()``; this mirrors
        ``DoG._update_group_state`` (dog 1.0.3) without changing any state.
        """
        group = self.optimizer.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return float(group["eta"][0]) if group.get("eta") else float(group["lr"])
        with torch.no_grad():
            wd = group["weight_decay"]
            g2 = sum(((p.grad + wd * p) ** 2).sum() for p in params)
            if getattr(self.optimizer, "_first_step", True):
                rbar = group["reps_rel"] * (1 + torch.stack([p.norm() for p in group["params"]]).norm())
                G = g2 + group["eps"]
            else:
                init = group["init_buffer"]
                dist = torch.stack([torch.norm(p - p0) for p, p0 in zip(group["params"], init)]).norm()
                rbar = torch.maximum(group["rbar"], dist.to(group["rbar"].device))
                G = group["G"] + g2.to(group["G"].device)
            return float(group["lr"] * rbar / torch.sqrt(G))


class IterateAverage:
    r"""DoG's polynomial-decay average of the iterates (Shamir & Zhang 2013), evaluated in place.

    .. math::

        \bar x_t = \Bigl(1 - \frac{1+\gamma}{t+\gamma}\Bigr)\bar x_{t-1} + \frac{1+\gamma}{t+\gamma}\, x_t,
        \qquad \gamma = 8

    The DoG package calls the average "crucial" without a decaying schedule.
    It stands where a scheduler would (``step()`` after each optimizer step):
    :meth:`swap_in` (the policy's ``on_eval``) loads the average into the
    model, :meth:`swap_out` (``on_train``) puts the iterate back.
    """

    def __init__(self, model: nn.Module, gamma: float = 8.0):
        from dog import PolynomialDecayAverager
        self.model = model
        self.averager = PolynomialDecayAverager(model, gamma=gamma)
        self._iterate: dict | None = None   # the training weights while the average is swapped in

    def step(self) -> None:
        self.averager.step()

    def swap_in(self) -> None:
        if self._iterate is None:
            self._iterate = copy.deepcopy(self.model.state_dict())
            self.model.load_state_dict(self.averager.averaged_model.state_dict())

    def swap_out(self) -> None:
        if self._iterate is not None:
            self.model.load_state_dict(self._iterate)
            self._iterate = None

    def get_last_lr(self) -> list[float]:
        return []

    def state_dict(self) -> dict:
        return {"t": self.averager.t, "average": self.averager.averaged_model.state_dict(),
                "iterate": self._iterate}

    def load_state_dict(self, state: dict) -> None:
        self.averager.t = int(state["t"])
        self.averager.averaged_model.load_state_dict(state["average"])
        self._iterate = state.get("iterate")


@register_policy("dog")
def dog(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """DoG (Ivgi, Hinder & Carmon 2023), c = ``config.lr`` (1); val/test at the averaged iterate."""
    from dog import DoG
    _plain_sgd_only(config, "dog")
    # the package: reps_rel 1e-6, or 1e-4 when the model has BatchNorm
    reps_rel = 1e-4 if _has_batchnorm(model) else 1e-6
    opt = DoG(model.parameters(), reps_rel=reps_rel, lr=config.lr, weight_decay=config.weight_decay)
    average = IterateAverage(model)
    return _DoGPolicy(opt, average, per_step=True, on_train=average.swap_out, on_eval=average.swap_in,
                      info={"reps_rel": reps_rel, "averaging": "polynomial decay, gamma=8"})


class _ScheduleFreePolicy(Policy):
    def current_lr(self) -> float:
        # the warm-up scales lr; the package logs the scaled rate as scheduled_lr (0 before step 1)
        group = self.optimizer.param_groups[0]
        return float(group["scheduled_lr"] or group["lr"])


#: forward passes that re-estimate BatchNorm statistics at x before evaluating schedule-free
BN_REFRESH_BATCHES = 20


@register_policy("schedulefree_sgd")
def schedulefree_sgd(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """Schedule-Free SGD (Defazio et al. 2024), lr = ``config.lr``, warm-up over 5 % of the steps.

    Trains at y and evaluates at x (``optimizer.train()``/``eval()``).  With
    BatchNorm, the statistics seen in training belong to y; as the package's
    README says, a few no-grad forwards in train mode refresh them at x.
    """
    from schedulefree import SGDScheduleFree
    _plain_sgd_only(config, "schedulefree_sgd")
    total = config.epochs * ctx.steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    opt = SGDScheduleFree(model.parameters(), lr=config.lr, momentum=0.9,
                          weight_decay=config.weight_decay, warmup_steps=max(0, math.ceil(0.05 * total)))
    opt.train()
    return _ScheduleFreePolicy(opt, on_train=opt.train, on_eval=schedule_free_eval(opt, model, ctx),
                  info={"warmup_steps": opt.param_groups[0]["warmup_steps"]})


def schedule_free_eval(opt, model: nn.Module, ctx: PolicyContext):
    """A Schedule-Free policy's ``on_eval``: ``opt.eval()`` (the weights at x), then, with
    BatchNorm, a few no-grad forwards in train mode that refresh its statistics at x."""
    refresh_bn = _has_batchnorm(model)

    def on_eval() -> None:
        opt.eval()
        if refresh_bn:
            was_training = model.training
            model.train()
            with torch.no_grad():
                for batch in itertools.islice(ctx.train_loader, BN_REFRESH_BATCHES):
                    model(batch[0].to(ctx.device))
            model.train(was_training)
    return on_eval
