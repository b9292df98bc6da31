"""β against the measured curvature, for the race's "why": one run of a study policy,
with the top Hessian eigenvalue of the batch loss measured at a few steps.

At each measured step, on that step's batch and before its update:

- ``lam_last``: λ_max of the loss's Hessian in the last layer's weights and bias (the
  block that β bounds), by Lanczos on Hessian-vector products with autograd;
- ``lam_all``: λ_max of the Hessian in every parameter (what gradient descent's
  step-size theory needs: lr <= 2/λ_all for stability; 2(1+μ)/λ_all with heavy-ball μ);
  the largest eigenvalue, not the largest in magnitude (the loss is not convex), by
  Lanczos on Hessian-vector products;
- ``beta``, ``lr``: the scheduler's β and the rate the step used (its record).

So ``lam_last/beta`` says how tight the bound is on its own block, and ``lr*lam_all``
says where the rate sits against the whole network's curvature (2 is the edge of
stability; far below 2 means the step could have been larger).

Run: .venv/bin/python benchmarks/bench_race_curvature.py [--policy lipschitz-smooth-step-momentum]
     [--preset mnist-whatif] [--steps 0 10 40 80 120 140] [--iters 20] [--out runs/bench/curvature.json]
Data as the study's (MNIST under default_data_root()).  Prints one line per measured step.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from lipschitz_lab.probe.hessian import muted


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mnist-whatif")
    ap.add_argument("--policy", default="lipschitz-smooth-step-momentum")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 10, 40, 80, 120, 140])
    ap.add_argument("--iters", type=int, default=20, help="Lanczos restarts at most per measurement")
    ap.add_argument("--out", default="runs/bench/curvature.json")
    return ap.parse_args(argv)


def top_eigenvalue(loss_of, params: list[torch.Tensor], iters: int) -> float:
    """The largest (most positive) eigenvalue of ∂²loss/∂params², by Lanczos (SciPy's eigsh,
    ``which="LA"``) on Hessian-vector products with autograd: unlike power iteration it
    finds the top of the spectrum when the dominant eigenvalue is negative (the loss is not
    convex), and converges in a few dozen products.  ``iters`` caps the restarts."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh
    grads = torch.autograd.grad(loss_of(), params, create_graph=True)
    sizes = [p.numel() for p in params]

    def hvp(flat: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float64).reshape(-1))
        parts = [t.view_as(p).to(p) for t, p in zip(torch.split(v, sizes), params)]
        hv = torch.autograd.grad(grads, params, grad_outputs=parts, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).double().cpu().numpy()
    n = sum(sizes)
    op = LinearOperator((n, n), matvec=hvp, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    (lam,) = eigsh(op, k=1, which="LA", v0=v0, ncv=min(n, 20), maxiter=iters, tol=1e-4,
                   return_eigenvectors=False)
    return float(lam)


@contextmanager
def unobserved(model: torch.nn.Module):
    """The model without its forward hooks (the probe must not see the measuring forwards),
    with its buffers (BatchNorm's running statistics) and the RNG (dropout's masks) put
    back afterwards: the run goes on as if nothing had been measured."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with muted(model):
            yield
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def measure(model, criterion, x, y, last, iters: int) -> dict:
    """λ_max of the batch loss's Hessian in the last layer and in every parameter."""
    def loss_of():
        return criterion(model(x).float(), y)
    with unobserved(model):
        return {"lam_last": top_eigenvalue(loss_of, [last.weight, last.bias], iters),
                "lam_all": top_eigenvalue(loss_of, [p for p in model.parameters() if p.requires_grad], iters)}


def train_step(s, x, y) -> tuple[torch.Tensor, float | None]:
    """The trainer's step (training/steps.py): returns the loss and, for a baseline, its lr."""
    policy = s.policy
    loss = s.crit(s.model(x).float(), y)
    loss.backward()
    lr_used = None if policy.lipschitz else policy.current_lr()
    policy.optimizer.step()
    if policy.scheduler is not None and (policy.lipschitz or policy.per_step):
        policy.scheduler.step()
    policy.optimizer.zero_grad(set_to_none=True)
    return loss, lr_used


def measured_step(s, x, y, last, step: int, iters: int) -> dict:
    """λ_max before the step, then the step, then its β and lr."""
    row = {"step": step, **measure(s.model, s.criterion, x, y, last, iters)}
    loss, lr_used = train_step(s, x, y)
    rec = s.policy.scheduler.last_record if s.policy.lipschitz else {"lr": lr_used}
    row.update(beta=rec.get("beta"), lr=rec["lr"], loss=float(loss.detach()))
    row["lam_last/beta"] = row["lam_last"] / row["beta"] if row.get("beta") else None
    row["lr*lam_all"] = row["lr"] * row["lam_all"]
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def main(argv=None) -> int:
    from lipschitz_lab.studies.spec import select, study_preset
    from lipschitz_lab.training.setup import build
    from lipschitz_lab.training.steps import close_schedule_epoch
    args = parse(argv)
    spec = study_preset(args.preset).replace(seeds=[args.seed], policies=select([args.policy]),
                                             base_overrides={"epochs": args.epochs})
    (plan,) = spec.runs()
    s = build({**plan.config, "checkpoint": False})
    model, policy = s.model, s.policy
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    rows, step, t0 = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        s.train_loader.set_epoch(epoch)                   # the trainer's batches, epoch by epoch
        if policy.on_train:
            policy.on_train()
        for x, y in s.train_loader:
            if step in args.steps:
                rows.append(measured_step(s, x.to(s.device), y.to(s.device), last, step, args.iters))
            else:
                train_step(s, x.to(s.device), y.to(s.device))
            step += 1
            if step > max(args.steps):
                break
        if step > max(args.steps):
            break
        close_schedule_epoch(s)                          # the trainer's epoch end, less evaluation
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"policy": args.policy, "preset": args.preset, "seed": args.seed,
                               "iters": args.iters, "seconds": time.perf_counter() - t0, "rows": rows}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
