"""A host-float reference of LipschitzLR's rate and record, for tests: the oracle beside the device step.

It is LipschitzLR as it was before the statistics moved to the device (one sync per step):
its own hook on the last layer reads A and the output, ``.grad`` is read after the backward,
the record's numbers are Python floats from :mod:`lipschitz_lab.bounds`' functions, and the
rate is the same formula in float64 tensors (no layout, no packing, no StepLog, no state object).  Run in the same loop as the real scheduler, it sees the very same tensors,
so the two must agree exactly on any machine, whatever its rounding (the BLAS-dependent
numbers are the shared input, not the thing compared).  Covers the paper/corrected/strict
bounds with both K_z definitions, step and epoch mode, the warm start, ``fixed_after``, the
follow-up paper's EMAs, ``lr_scale`` and ``bound="smooth"``; the layer-wise rule and the
exact protocol have tests of their own.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lipschitz_lab.bounds import CLAMPS, VARIANTS, learning_rate, lipschitz_bound, smoothness_bound
from lipschitz_lab.optim_variants import BoundEMA
from lipschitz_lab.probe.spectral import PowerIteration


class ReferenceLR:
    """Expected LipschitzLR step records, from host floats (see the module docstring)."""

    def __init__(self, model: nn.Module, opt, loss: str, *, k=None, bound="paper", kz="frobenius", recompute="epoch",
                 fixed_after=None, min_lr=1e-6, max_lr=10.0, variant="sgd", smooth_c=1.0, momentum=0.0):
        self.model, self.opt, self.loss, self.k, self.bound, self.kz = model, opt, loss, k, bound, kz
        self.recompute, self.fixed_after, self.min_lr, self.max_lr = recompute, fixed_after, min_lr, max_lr
        self.variant, self.c = variant, smooth_c * (1 + momentum)
        self.ema = BoundEMA(variant)
        self.power = PowerIteration(4) if bound == "smooth" else None
        self.last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        self.last.register_forward_hook(self._hook)
        self.params = [(n, p) for n, p in model.named_parameters()]
        self.rate = None                 # (lr, K_z, L, clamped) in force
        self.epoch_max: dict[str, float] = {}
        self.epoch, self.step_index, self.frozen = 0, 0, False
        self.y_norm = None

    def _hook(self, module, args, out):
        if torch.is_grad_enabled():
            a = args[0].detach()
            self.stats = {"frob": float(torch.linalg.vector_norm(a).double()),
                          "max_abs": float(torch.linalg.vector_norm(a, ord=math.inf)),
                          "K_a": float(torch.linalg.vector_norm(out.detach()).double()), "m": a.shape[0],
                          "sigma": math.sqrt(float(self.power.sigma_sq(a))) if self.power else None}

    def observe(self, y):
        self.y_norm = float(torch.linalg.vector_norm(y.float()).double())

    def _lam(self):
        return max(float(g.get("weight_decay", 0.0)) for g in self.opt.param_groups)

    def _w_max(self):
        return max(float(n.float()) for n in torch._foreach_norm([p.detach() for _, p in self.params]))

    def _inputs(self, s):
        K_z = s["frob"] if self.kz == "frobenius" else s["max_abs"]
        extra = {"softmax_ce": {"k": self.k}, "label_smoothed_ce": {"k": self.k, "eps": 0.1},
                 "mse": {"K_a": s["K_a"], "y_norm": self.y_norm}, "bce": {}}[self.loss]
        return K_z, extra

    def L(self, variant, s, lam, w_max):
        K_z, extra = self._inputs(s)
        return lipschitz_bound(self.loss, variant, K_z=K_z, m=s["m"], lam=lam, w_max=w_max, kz=self.kz, **extra)

    def beta(self, s, lam):
        S2 = smoothness_bound(self.loss, m=s["m"], **{n: v for n, v in self._inputs(s)[1].items() if n in ("k", "eps")})
        return S2 * s["sigma"] * s["sigma"] + lam

    def _set(self, s, w_max):
        """The rate, computed as the device computes it: float64 tensors through the same generated
        functions (torch's float64 sqrt is not always Python's to the last bit); then plain floats."""
        lam = self._lam()
        t = {k: None if v is None else torch.tensor(float(v), dtype=torch.float64) for k, v in s.items()}
        t["m"] = torch.tensor(float(s["m"]), dtype=torch.float64)
        w = torch.tensor(float(w_max), dtype=torch.float64)
        if self.bound == "smooth":
            L = self.beta(t, lam)
            D = L / self.c
        else:
            L = self.L(self.bound, t, lam, w)
            L_wd = L - self.L(self.bound, t, 0.0, 0.0) if lam and self.variant in ("rmsprop", "adam") else 0.0
            D = self.ema.update(L, L_wd)
        K_z = self._inputs(t)[0]
        lr, code = learning_rate(D, min_lr=self.min_lr, max_lr=self.max_lr, K_z=K_z)
        self.rate = (float(lr), float(K_z), float(L), CLAMPS[int(code)])

    def before_step(self):
        """Call just before ``optimizer.step()`` (the warm start reads this batch)."""
        self.w_snap = self._w_max()
        if self.rate is None:
            self._set(self.stats, self.w_snap)
            self.warm = True

    def step(self) -> dict:
        """Call after ``optimizer.step()``, before ``zero_grad()``: the expected record."""
        s, lam, w_max = self.stats, self._lam(), self.w_snap
        used = self.rate
        for key in ("frob", "max_abs", "K_a", "m", "sigma"):
            if s[key] is not None:
                self.epoch_max[key] = max(self.epoch_max.get(key, -math.inf), s[key])
        if self.recompute == "step" and not getattr(self, "warm", False) and not self.frozen:
            self._set(s, w_max)
        self.warm = False
        grads = {n: float(p.grad.abs().max()) for n, p in self.params if p.grad is not None}
        owners = {}
        for n, v in grads.items():
            owners[n.rpartition(".")[0]] = max(owners.get(n.rpartition(".")[0], 0.0), v)
        Ls = {v: self.L(v, s, lam, w_max) for v in VARIANTS if (self.loss, v) != ("label_smoothed_ce", "paper")}
        scale = float(self.opt.param_groups[0].get("lr_scale", 1.0))
        rec = {"step": self.step_index, "epoch": self.epoch, "lr": used[0] * scale, "K_z_rate": used[1],
               "L_rate": used[2], "clamped": used[3], "lr_next": self.rate[0] * scale, "w_max": w_max, "m": s["m"],
               "K_z": self._inputs(s)[0], "L_strict": Ls["strict"], "L_corrected": Ls["corrected"],
               "L_paper": Ls.get("paper"), "grad_layers": owners, "lam": lam,
               "grad_last": max(v for n, v in grads.items() if n.startswith(self._last_name()))}
        if self.bound == "smooth":
            rec["beta"] = self.beta(s, lam)
        rec["L"] = Ls["strict"] if self.bound == "smooth" else Ls[self.bound]
        self.step_index += 1
        return rec

    def _last_name(self):
        return next(n for n, m in self.model.named_modules() if m is self.last) + "."

    def epoch_end(self):
        self.epoch += 1
        if not self.frozen and self.recompute == "epoch" and self.epoch_max:
            s = dict(self.epoch_max)
            self._set(s, self._w_max())
        self.epoch_max = {}
        if self.fixed_after is not None and self.epoch >= self.fixed_after:
            self.frozen = True
