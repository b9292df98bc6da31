"""The recipes people train with, on the GPU (issue 21, item 8): optimizers that take a tensor rate
and ones that do not, fp16 with a GradScaler, bf16 autocast.

For each recipe on the Table-1 CNN, :func:`step_recipes` measures

- the cost: ms per step of the recipe with LipschitzLR (strict bound, per step) against the same
  recipe without it, in windows that take turns (as :mod:`_gpu_loops`);
- a sync census: host syncs per step between two flushes (CUDA's sync debug mode "warn", each
  warning's stack kept), without LipschitzLR (the recipe's own: GradScaler's inf check, say) and
  with it, per step and per epoch.  Expected, beyond the recipe's own: 0 for the optimizers that read
  a device rate (fused SGD, and every recipe with ``recompute="epoch"`` between epoch ends), one per
  step for the float-mode optimizers (for-loop SGD, foreach Adam) with ``recompute="step"``: one per
  rate change.
"""
from __future__ import annotations

import statistics

import torch

import _gpu_data as data
from _gpu_loops import MAX_LR, MODELS, window
from _gpu_sync import SyncGuard
from lipschitz_lab import LipschitzLR
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.models import get_model
from lipschitz_lab.policies.base import make_optimizer

#: recipe -> (optimizer, autocast dtype or None, GradScaler?)
RECIPES = {
    "fused_sgd": ("fused_sgd", None, False),
    "plain_sgd": ("plain_sgd", None, False),          # for-loop SGD: no tensor rate without a sync
    "adam_unfused": ("adam", None, False),            # foreach Adam, capturable=False: a float rate
    "fp16_gradscaler": ("fused_sgd", torch.float16, True),
    "bf16": ("fused_sgd", torch.bfloat16, False),
}


def _optimizer(kind: str, params):
    if kind == "fused_sgd":
        return make_optimizer("sgd", params, lr=0.01, weight_decay=0.0)     # fused on CUDA
    if kind == "plain_sgd":
        return torch.optim.SGD(params, lr=0.01, foreach=False)
    return torch.optim.Adam(params, lr=1e-3, fused=False)


class RecipeLoop:
    """The CNN with one recipe, with or without LipschitzLR (``recompute``)."""

    def __init__(self, recipe: str, device: torch.device, recompute: str | None, flush_every: int = 32):
        torch.manual_seed(0)
        kind, self.amp, scaled = RECIPES[recipe]
        self.device = device
        self.model = get_model("mnist_cnn", input_shape=MODELS["mnist_cnn"][0], num_outputs=10).to(device)
        self.opt = _optimizer(kind, self.model.parameters())
        self.scaler = torch.amp.GradScaler(device.type) if scaled else None
        self.crit, self.sched, self.cursor = make_criterion("softmax_ce"), None, 0
        if recompute is not None:
            variant = "adam" if kind == "adam" else "sgd"
            self.sched = LipschitzLR(self.opt, self.model, "softmax_ce", num_classes=10, bound="strict",
                                     recompute=recompute, max_lr=MAX_LR, variant_optimizer=variant,
                                     scaler=self.scaler, flush_every=flush_every)
            self.crit = self.sched.wrap_loss(self.crit)

    def step(self, x, y) -> None:
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.crit(self.model(x), y)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        if self.sched is not None:
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def end_window(self) -> None:
        if self.sched is not None:
            self.sched.epoch_end()

    def close(self) -> None:
        if self.sched is not None:
            self.sched.close()


def _cost(recipe: str, batches, device, *, steps: int, rounds: int, warm: int) -> dict:
    loops = {"without": RecipeLoop(recipe, device, None), "with": RecipeLoop(recipe, device, "step")}
    for loop in loops.values():
        window(loop, batches, warm)
    times: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(rounds):
        for name in (("without", "with") if r % 2 == 0 else ("with", "without")):
            times[name].append(window(loops[name], batches, steps)[0])
    for loop in loops.values():
        loop.close()
    paired = statistics.median(w / b for w, b in zip(times["with"], times["without"])) - 1
    return {"ms_without": round(statistics.median(times["without"]) * 1e3, 3),
            "ms_with": round(statistics.median(times["with"]) * 1e3, 3), "paired_overhead": round(paired, 4)}


def _census(recipe: str, batches, device, recompute: str | None, steps: int, cuda: bool) -> dict:
    loop = RecipeLoop(recipe, device, recompute, flush_every=10**6)
    loop.step(*batches[0])                            # the warm start, its entry flushed at once
    guard = SyncGuard(cuda, count=True)
    with guard.installed():
        for i in range(steps):
            with guard.armed("step"):
                loop.step(*batches[(i + 1) % len(batches)])
    loop.close()
    per_step = sum(n for k, n in guard.counts.items() if k.startswith("step")) / steps
    return {"syncs_per_step": round(per_step, 3), "where": dict(guard.counts.most_common(4))}


def step_recipes(ctx) -> dict:
    sz, out = ctx.sizes, {}
    source = data.pick(MODELS["mnist_cnn"][1], ctx.smoke)
    batches = data.device_batches(source, sz.batch["mnist_cnn"], sz.pool, ctx.device)
    for recipe in RECIPES:
        if RECIPES[recipe][1] is torch.float16 and not ctx.cuda:
            out[recipe] = {"skipped": "fp16 GradScaler: CUDA only here"}
            continue
        out[recipe] = {**_cost(recipe, batches, ctx.device, steps=sz.overhead_steps, rounds=sz.overhead_rounds,
                               warm=sz.overhead_warm),
                       **{f"census_{r}": _census(recipe, batches, ctx.device, None if r == "none" else r,
                                                 sz.sync_steps, ctx.cuda) for r in ("none", "step", "epoch")}}
    return {"batch": sz.batch["mnist_cnn"], "data": source, "recipes": out,
            "census_counts": "CUDA syncs" if ctx.cuda else "host reads of CPU tensors (no device: not syncs)"}


def render(res: dict) -> list[str]:
    rows = ["| recipe | ms/step without | with LipschitzLR (step) | paired overhead | syncs/step without "
            "| with, rate per step | with, rate per epoch |", "|---|---|---|---|---|---|---|"]
    for recipe, r in res.get("recipes", {}).items():
        if "skipped" in r:
            rows.append(f"| {recipe} | {r['skipped']} | | | | | |")
            continue
        rows.append(f"| {recipe} | {r['ms_without']:.3f} | {r['ms_with']:.3f} | {100 * r['paired_overhead']:+.1f}% "
                    f"| {r['census_none']['syncs_per_step']} | {r['census_step']['syncs_per_step']} "
                    f"| {r['census_epoch']['syncs_per_step']} |")
    return [f"mnist_cnn, batch {res.get('batch')}, data {res.get('data')}; census: {res.get('census_counts')}.",
            "", *rows]
