"""What the curvature instruments cost: CurvatureMonitor every N steps on the Table-1 CNN, CPU.

Loops over the same synthetic batches (MNIST-shaped images, random labels: the cost does not
depend on the data), SGD with momentum 0.9, taking turns window by window (a window is N
steps, so each monitored window holds exactly one measured step; the order rotates so that
load from other processes hits the loops alike):

1. ``plain``:   forward, backward, ``optimizer.step()``, ``zero_grad()``;
2. ``k1``:      + the monitor, λ_max only (``quality=False``): one gradient with its graph and
               k = 1 Hessian-vector product per measurement;
3. ``k5``:      k = 5 Lanczos steps (the monitor's default), λ_max only;
4. ``k5+q``:    the monitor's defaults: k = 5, and dir_curv and α (one more product);
5. ``k1,rows``: as ``k1`` on the batch's first ``--rows`` rows only (``rows=``).

The figure is the median over rounds of the paired ratio (monitored window / plain window of
the same round) − 1, in wall time and in process CPU time; the CPU-time ratio is the steadier
one on a shared machine.  A second part times the pieces on their own, interleaved, in units
of one plain step: the gradient with its graph (``hessian_at``) and one product.  The share at
another N follows: (cost of one measurement) / (N · step).  Target: <= 10% at N = 10.

``--accuracy`` instead trains ``--steps`` steps on real MNIST (SGD, momentum 0.9, lr 0.01) with
monitors of k = ``--ks`` Lanczos steps (warm-started every N steps; 20 steps the first time)
and, at each measured step, the converged λ_max (30 Lanczos steps from a cold start, at the
same weights, batch and dropout masks) and the converged λ_max of the first ``--rows`` rows:
how far the cheap settings are from it.

    .venv/bin/python benchmarks/bench_curvature_overhead.py [--batch 256] [--every 10] [--rounds 5]
    .venv/bin/python benchmarks/bench_curvature_overhead.py --accuracy [--steps 60] [--ks 1 3 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from _machine import cpu_model
from lipschitz_lab.models import get_model
from lipschitz_lab.probe.curvature import Sharpness
from lipschitz_lab.probe.hessian import capture_rng, hessian_at
from lipschitz_lab.probe.monitor import CurvatureMonitor

#: loop -> CurvatureMonitor options (None: no monitor)
MODES = {"plain": None, "k1": {"iters": 1, "quality": False}, "k5": {"iters": 5, "quality": False},
         "k5+q": {"iters": 5, "quality": True}, "k1,rows": {"iters": 1, "quality": False, "rows": 64}}


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--every", type=int, default=10, help="N: steps per measurement (and per window)")
    ap.add_argument("--rounds", type=int, default=5, help="timed windows per loop (after one warm-up)")
    ap.add_argument("--pieces", type=int, default=5, help="repeats of the piece timings")
    ap.add_argument("--rows", type=int, default=64, help="rows of the k1,rows loop and the accuracy part")
    ap.add_argument("--accuracy", action="store_true", help="the accuracy part instead of the timings")
    ap.add_argument("--steps", type=int, default=40, help="training steps of the accuracy part")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5], help="Lanczos steps of the monitors")
    ap.add_argument("--out", default="runs/bench/curvature_overhead.json")
    return ap.parse_args(argv)


class Loop:
    """One model and optimizer, with or without a monitor, stepping through the shared batches."""

    def __init__(self, options: dict | None, batches, every: int):
        torch.manual_seed(0)
        self.model = get_model("mnist_cnn", input_shape=(1, 28, 28), num_outputs=10)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.crit = nn.CrossEntropyLoss()
        self.mon = None if options is None else CurvatureMonitor(
            self.model, self.opt, self.crit, every=every, cold_iters=options["iters"], **options)
        self.mon_options = options
        self.loss_fn = self.mon.wrap_loss(self.crit) if self.mon else self.crit
        self.batches, self.i = batches, 0

    def window(self, steps: int) -> tuple[float, float]:
        """Wall and process CPU seconds for ``steps`` steps."""
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            x, y = self.batches[self.i % len(self.batches)]
            self.i += 1
            self.loss_fn(self.model(x), y).backward()
            self.opt.step()
            if self.mon:
                self.mon.step()
            self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - w0, time.process_time() - c0


def windows(args, batches) -> dict[str, dict]:
    modes = {k: (v if v is None or "rows" not in v else {**v, "rows": args.rows}) for k, v in MODES.items()}
    loops = {name: Loop(opts, batches, args.every) for name, opts in modes.items()}
    for loop in loops.values():                       # warm-up: the cold start, mkldnn's first calls
        loop.window(args.every)
    times = {name: [] for name in MODES}
    names = list(MODES)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(loops[name].window(args.every))
    out = {}
    for name, ts in times.items():
        wall = [t[0] / p[0] - 1 for t, p in zip(ts, times["plain"])]
        cpu = [t[1] / p[1] - 1 for t, p in zip(ts, times["plain"])]
        out[name] = {"window_wall_s": statistics.median(t[0] for t in ts),
                     "overhead_wall": statistics.median(wall),
                     "overhead_cpu": statistics.median(cpu), "overhead_cpu_all": cpu}
    return out


def pieces(args, batches) -> dict[str, float]:
    """Median seconds of a plain step, of hessian_at, and of one product; interleaved."""
    loop = Loop(None, batches, args.every)
    model, crit = loop.model, loop.crit
    x, y = batches[0]
    def snapshot():          # the monitor's: the weights behind the step, so the step may move
        return {n: p.detach().clone() for n, p in model.named_parameters()}
    hvp = hessian_at(model, x, lambda z: crit(z, y), weights=snapshot(), rng=capture_rng())
    v = [torch.randn_like(p) for p in hvp.params]
    runs = {"step": lambda: loop.window(1),
            "hessian_at": lambda: hessian_at(model, x, lambda z: crit(z, y), weights=snapshot(),
                                             rng=capture_rng()),
            "product": lambda: hvp(v)}
    times = {k: [] for k in runs}
    for _ in range(args.pieces):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def timings(args) -> dict:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(args.batch, 1, 28, 28, generator=g),
                torch.randint(0, 10, (args.batch,), generator=g)) for _ in range(4)]
    result = {"batch": args.batch, "every": args.every, "rows": args.rows, "rounds": args.rounds,
              "windows": windows(args, batches)}
    p = pieces(args, batches)
    step = p["step"]
    result["step_s"] = step
    result["pieces_in_steps"] = {"hessian_at": p["hessian_at"] / step, "product": p["product"] / step}
    cost = {name: result["pieces_in_steps"]["hessian_at"] + n * result["pieces_in_steps"]["product"]
            for name, n in (("k1", 1), ("k5", 5), ("k5+q", 6))}
    result["modelled"] = {name: {"measurement_steps": c, "share_at_N": c / args.every,
                                 "N_for_10pct": c / 0.10} for name, c in cost.items()}
    for name, w in result["windows"].items():
        print(f"{name:8s} window {w['window_wall_s']:.2f} s  overhead wall {w['overhead_wall']:+.1%}  "
              f"cpu {w['overhead_cpu']:+.1%}")
    print(json.dumps({k: result[k] for k in ("step_s", "pieces_in_steps", "modelled")}, indent=1))
    return result


def converged(model, x, y, crit, weights, rng, rows=None) -> float:
    """λ_max by 30 Lanczos steps from a cold start, at ``weights`` on (the first ``rows`` rows of) x, y."""
    if rows is not None:
        x, y = x[:rows], y[:rows]
    hvp = hessian_at(model, x, lambda z: crit(z, y), weights=weights, rng=rng)
    return float(Sharpness(cold_iters=30).measure(hvp))


def accuracy(args) -> dict:
    """The warm monitors (k = ``--ks``) and the rows estimate against the converged λ_max."""
    from lipschitz_lab.data import get_dataset
    splits = get_dataset("mnist", train_subset=args.batch * (args.steps + 1), augment=False)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=args.batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    loop = Loop(None, None, args.every)
    model, opt, crit = loop.model, loop.opt, loop.crit
    mons = {k: CurvatureMonitor(model, opt, crit, every=args.every, iters=k, quality=False)
            for k in args.ks}
    rows = []
    for step, (x, y) in zip(range(args.steps + 1), loader):
        rng, weights = capture_rng(), {n: p.detach().clone() for n, p in model.named_parameters()}
        for mon in mons.values():
            mon.observe(y)
        crit(model(x), y).backward()
        opt.step()
        vecs = {k: mon.step() for k, mon in mons.items()}
        opt.zero_grad(set_to_none=True)
        if step % args.every == 0:
            row = {"step": step, "converged": converged(model, x, y, crit, weights, rng),
                   f"rows={args.rows}": converged(model, x, y, crit, weights, rng, args.rows),
                   **{f"k={k}": float(v[0]) for k, v in vecs.items()}}
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
            rows.append(row)
    ratio = {key: [r[key] / r["converged"] for r in rows]
             for key in rows[0] if key not in ("step", "converged")}
    return {"batch": args.batch, "every": args.every, "steps": args.steps, "rows": rows,
            "ratio_to_converged": ratio}


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
    result = {"machine": cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
              **(accuracy(args) if args.accuracy else timings(args))}
    result["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
