"""The Lipschitz policy: lr = lr_scale / L (:class:`~lipschitz_lab.scheduler.LipschitzLR`)."""
from __future__ import annotations

from torch import nn

from lipschitz_lab.config import TrainConfig
from lipschitz_lab.policies.base import Policy, PolicyContext, make_optimizer, register_policy


def _lipschitz_scheduler(config: TrainConfig, model: nn.Module, optimizer, ctx: PolicyContext):
    from lipschitz_lab.bounds import bound_inputs
    from lipschitz_lab.scheduler import CurvatureOptions, LipschitzLR, SmoothOptions
    return LipschitzLR(optimizer, model, config.loss, num_classes=ctx.num_classes, bound=config.bound,
                       kz=config.kz, recompute=config.recompute, fixed_after=config.fixed_after,
                       min_lr=config.min_lr, max_lr=config.max_lr,
                       eps=config.eps if "eps" in bound_inputs(config.loss) else None,
                       exact_protocol=config.exact_protocol,
                       loader=ctx.train_loader if config.exact_protocol else None,
                       variant_optimizer=config.optimizer,
                       smooth=SmoothOptions(c=config.smooth_c, layerwise=config.smooth_layerwise),
                       measure_beta=config.measure_beta or config.bound == "smooth", log=ctx.log,
                       sharpness_every=config.sharpness_every,
                       curvature=CurvatureOptions(iters=config.sharpness_iters, c=config.smooth_c))


@register_policy("lipschitz")
def lipschitz(config: TrainConfig, model: nn.Module, ctx: PolicyContext) -> Policy:
    """lr = lr_scale / L, recomputed per epoch or step (:class:`~lipschitz_lab.scheduler.LipschitzLR`)."""
    params = model.parameters()
    if config.smooth_layerwise:             # one param group per Linear layer: each gets its own rate
        params = [{"params": list(m.parameters())} for m in model.modules()
                  if isinstance(m, nn.Linear)]
    optimizer = make_optimizer(config.optimizer, params, lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["lr_scale"] = config.lr_scale
    sched = _lipschitz_scheduler(config, model, optimizer, ctx)
    return Policy(optimizer, sched, per_step=True, lipschitz=True, wrap_loss=sched.wrap_loss,
                  info={"lr_scale": config.lr_scale})
