"""Wall-time overhead of LipschitzLR on the paper's MNIST CNN (Table 1), CPU.

Five loops over the same N batches of full MNIST, taking turns batch by batch
(the order rotates, so that load from other processes hits them alike),
repeated for a few epochs (medians reported):

1. ``fixed``:  SGD at a fixed lr (``max_lr``), no probe, no scheduler;
2. ``online``: the probe's hooks + ``LipschitzLR`` (``sched.step()`` every
   step, ``epoch_end()`` once): the rate from the training batches themselves,
   set once per epoch (the paper);
3. ``online_step``: the same, the rate set every step (``recompute="step"``);
4. ``smooth``: ``bound="smooth"``, every step: + the power iteration for σ_max;
5. ``exact``:  the authors' protocol: as ``online``, plus one extra eval-mode,
   no-grad pass over the same N batches at the epoch's start.

Each step is timed in wall time and in process CPU time; the paired columns
are medians of per-batch ratios against the fixed loop's batch run next to
it, with a 95% confidence interval.  The CPU-time ratio is the steadier figure
on a shared machine (other processes' load moves wall time far more than this
process's CPU time; with ``--threads 1`` it is exactly the step's own work),
but two model instances can differ by a few percent on their own (memory
placement), so a 1% effect needs a direct figure too: "own work" is the CPU
time spent inside LipschitzLR itself -- the probe's forward hook, its
optimizer pre-hook and ``sched.step()`` (which decodes the queued records every
32 steps, so its mean is taken) -- against the fixed loop's step.  The records
reach a subscriber, as in the trainer.

The paper's extra pass cost 12.5% (3 s of 24 s per CIFAR-10 epoch); the
online probe's target is <= 1% (issue 11; <= 3% before).  The rate is capped
(``max_lr``) so that no run diverges: the cost does not depend on the rate.
Data: MNIST under ``default_data_root()`` ($LIPSCHITZ_LAB_DATA or ../shared/data).
Not a unit test.

    .venv/bin/python benchmarks/bench_scheduler_overhead.py [--batches 30] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from _machine import cpu_model
from lipschitz_lab import LipschitzLR
from lipschitz_lab.bounds import lipschitz_bound
from lipschitz_lab.data import default_data_root
from lipschitz_lab.models import get_model

ROOT = Path(__file__).resolve().parent
#: loop -> LipschitzLR arguments (None: no probe, no scheduler)
MODES = {"fixed": None, "online": {}, "online_step": {"recompute": "step"},
         "smooth": {"bound": "smooth", "recompute": "step"}, "exact": {"exact_protocol": True}}
TARGET = 0.01


def load_mnist(n: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from torchvision.datasets import MNIST
    ds = MNIST(root=str(default_data_root()), train=True, download=False)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.data), generator=g)[: n * batch_size]
    x = ds.data[idx].unsqueeze(1).float() / 255.0           # the paper: raw values / 255
    y = ds.targets[idx]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


class Loop:
    """One model, optimizer and (optionally) scheduler, stepped one batch at a time."""

    def __init__(self, mode: str, max_lr: float):
        torch.manual_seed(0)
        self.mode = mode
        self.model = get_model("mnist_cnn", input_shape=(1, 28, 28), num_outputs=10).train()
        # the fixed loop runs at max_lr, the rate the capped LipschitzLR loops end up at (the paper
        # bound gives lr >> max_lr here), so that all loops' weights, and their arithmetic, stay alike
        self.opt = torch.optim.SGD(self.model.parameters(), lr=max_lr)
        self.crit = nn.CrossEntropyLoss()
        self.sched = None
        self.records: list[dict] = []        # first and last step records, as a subscriber gets them
        if MODES[mode] is not None:
            self.sched = LipschitzLR(self.opt, self.model, "softmax_ce", num_classes=10, max_lr=max_lr,
                                     **MODES[mode])
            self.sched.subscribe(self._keep)
            self._time_hooks()
        self.wall_s: list[float] = []        # whole training step, per batch
        self.cpu_s: list[float] = []         # its process CPU time
        self.sched_s: list[float] = []       # inside sched.step()
        self.own_cpu: list[float] = []       # CPU time of all LipschitzLR's own work in a step
        self._hooks_cpu = 0.0                # ... of its two hooks, this step
        self.pass_s: list[float] = []        # the exact protocol's extra pass, per epoch
        self.measured: list[dict] = []       # its measurements

    def _time_hooks(self) -> None:
        """Wrap the probe's forward hook and the scheduler's optimizer pre-hook to add up their CPU time."""
        def timed(fn):
            def hook(*args, **kwargs):
                c = time.process_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._hooks_cpu += time.process_time() - c
            return hook
        probe, sched = self.sched.probe, self.sched
        for table, handle in ((probe.layer._forward_hooks, probe.handle),
                              (self.opt._optimizer_step_pre_hooks, sched.pre_hook)):
            table[handle.id] = timed(table[handle.id])

    def _keep(self, record: dict) -> None:
        self.records[1:] = [record] if self.records else []
        if not self.records:
            self.records.append(record)

    def epoch_start(self, batches) -> None:
        if self.mode == "exact":
            t = time.perf_counter()
            self.measured.append(self.sched.measure_epoch(batches))  # eval mode, no grad, fixed order
            self.pass_s.append(time.perf_counter() - t)

    def train_step(self, x, y) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        self.crit(self.model(x), y).backward()
        self.opt.step()
        if self.sched is not None:
            t, c = time.perf_counter(), time.process_time()
            self.sched.step()
            self.sched_s.append(time.perf_counter() - t)
            self.own_cpu.append(time.process_time() - c + self._hooks_cpu)
            self._hooks_cpu = 0.0
        self.opt.zero_grad()
        self.wall_s.append(time.perf_counter() - t0)
        self.cpu_s.append(time.process_time() - c0)

    def epoch_end(self) -> None:
        if self.sched is not None:
            self.sched.epoch_end()

    def clear(self) -> None:
        self._hooks_cpu = 0.0
        for times in (self.wall_s, self.cpu_s, self.sched_s, self.own_cpu):
            times.clear()


def measure(args) -> tuple[dict[str, Loop], dict, list]:
    """The loops after ``args.repeats`` interleaved epochs, the untrained eval-mode K_z, the batches."""
    batches = load_mnist(args.batches, args.batch_size)
    loops = {m: Loop(m, args.max_lr) for m in MODES}
    untrained = loops["exact"].sched.probe.measure(batches)   # the trap, before any update (untimed)
    for loop in loops.values():                                # warm-up, untimed
        for x, y in batches[:2]:
            loop.train_step(x, y)
        loop.clear()
    names = list(MODES)
    for r in range(args.repeats):
        for loop in loops.values():
            loop.epoch_start(batches)
        for i, (x, y) in enumerate(batches):
            for mode in names[i % len(names):] + names[:i % len(names)]:
                loops[mode].train_step(x, y)
        for loop in loops.values():
            loop.epoch_end()
        print(f"repeat {r}: " + ", ".join(f"{m} {sum(loops[m].wall_s[-len(batches):]):.1f} s" for m in MODES),
              file=sys.stderr, flush=True)
    for loop in loops.values():
        if loop.sched is not None:
            loop.sched.flush()                                 # the last records, untimed
    return loops, untrained, batches


def paired(loop: Loop, fixed: Loop, field: str) -> tuple[float, float, float]:
    """Median of the per-batch ratios against the fixed loop, minus 1, with its 95% confidence interval
    (order statistics: the ranks n/2 -+ 1.96 sqrt(n)/2 of the sorted ratios, no assumption on their spread)."""
    r = sorted(a / b - 1 for a, b in zip(getattr(loop, field), getattr(fixed, field)))
    k = max(0, math.floor((len(r) - 1.96 * math.sqrt(len(r))) / 2))
    return statistics.median(r), r[k], r[len(r) - 1 - k]


def verdict(m: str, f: dict) -> str:
    """Against the target: LipschitzLR's own work per step, and whether the paired step times resolve it."""
    med, lo, hi = f["cpu"]
    paired_state = ("also below 1%" if hi <= TARGET else "above 1%" if lo > TARGET
                    else "which does not resolve 1% at this noise")
    return (f"{m}: own work {100 * f['own']:.2f}% of a step ({'met' if f['own'] <= TARGET else 'NOT met'}); "
            f"paired step times {100 * med:+.1f}% (95% CI {100 * lo:+.1f}% to {100 * hi:+.1f}%), {paired_state}")


def table(loops: dict[str, Loop], n: int) -> tuple[str, dict]:
    fixed = loops["fixed"]
    med = {m: statistics.median(loop.wall_s) for m, loop in loops.items()}
    extra = statistics.median(loops["exact"].pass_s)
    epoch = {m: n * med[m] + (extra if m == "exact" else 0.0) for m in loops}
    rows = ["| loop | epoch of N batches, s | step, median ms (wall) | step, median ms (CPU) "
            "| sched.step(), median / mean ms | own work, mean ms (CPU) | own work / fixed step (CPU) "
            "| overhead vs fixed (epoch, wall) | paired, wall | paired, CPU (95% CI) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    figures = {}
    for m, loop in loops.items():
        cpu = 1e3 * statistics.median(loop.cpu_s)
        if m == "fixed":
            rows.append(f"| fixed | {epoch[m]:.2f} | {1e3 * med[m]:.0f} | {cpu:.0f} |" + " – |" * 6)
            continue
        own = statistics.fmean(loop.own_cpu)                   # the mean: flushes decode every 32nd step
        figures[m] = {"epoch": epoch[m] / epoch["fixed"] - 1, "wall": paired(loop, fixed, "wall_s"),
                      "cpu": paired(loop, fixed, "cpu_s"), "own": own / statistics.median(fixed.cpu_s)}
        note = f" (incl. extra pass {extra:.2f} s)" if m == "exact" else ""
        wall = f"{100 * figures[m]['wall'][0]:+.1f}%"
        if m == "exact":
            wall += f" steps, {100 * (figures[m]['wall'][0] + extra / epoch['fixed']):+.1f}% with the pass"
        c_med, c_lo, c_hi = figures[m]["cpu"]
        rows.append(f"| {m} | {epoch[m]:.2f}{note} | {1e3 * med[m]:.0f} | {cpu:.0f} | "
                    f"{1e3 * statistics.median(loop.sched_s):.2f} / {1e3 * statistics.fmean(loop.sched_s):.2f} | "
                    f"{1e3 * own:.2f} | {100 * figures[m]['own']:.2f}% | {100 * figures[m]['epoch']:+.1f}% | {wall} | "
                    f"{100 * c_med:+.1f}% ({100 * c_lo:+.1f} to {100 * c_hi:+.1f}) |")
    return "\n".join(rows), figures


def trap_text(loops: dict[str, Loop], untrained: dict, args) -> str:
    on, ex = loops["online"].records, loops["exact"].measured
    K_eval = untrained["K_z_frobenius"]
    L_eval = lipschitz_bound("softmax_ce", "paper", K_z=K_eval, m=untrained["m"], k=10)
    return (f"The BatchNorm trap, untrained network: train-mode K_z = {on[0]['K_z']:.4g} "
            f"(first batch) gives the paper's lr = {1 / on[0]['L']:.3g}; the exact protocol's eval-mode "
            f"K_z = {K_eval:.4g} (max over the {args.batches} batches) gives lr = {1 / L_eval:.3g}, "
            f"{on[0]['K_z'] / K_eval:.0f}x apart.  After {args.repeats} epochs at lr <= {args.max_lr}: "
            f"{on[-1]['K_z']:.4g} (train) vs {ex[-1]['K_z']:.4g} (eval).")


def header(args, minutes: float) -> str:
    cmd = (f"cd <repo> && .venv/bin/python benchmarks/bench_scheduler_overhead.py --batches {args.batches} "
           f"--batch-size {args.batch_size} --repeats {args.repeats} --max-lr {args.max_lr}"
           + (f" --threads {args.threads}" if args.threads else ""))
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads "
            f"({len(os.sched_getaffinity(0))} cores); torch {torch.__version__}; Python {platform.python_version()}; "
            f"{dt.date.today().isoformat()}; the run took {minutes:.1f} min; load average at its end {load}.\n"
            f"Command: `{cmd}`.  One epoch = {args.batches} batches of {args.batch_size} MNIST images, "
            f"{args.repeats} epochs, medians.")


HEADING = "## Scheduler overhead: probe + LipschitzLR on the MNIST CNN (issue 3)"
INTRO = ("Wall time of N training steps at a fixed lr, with the online probe and scheduler (rate per epoch, "
         "per step, and the smooth bound), and with the authors' exact protocol (one extra eval-mode pass per "
         "epoch). The paper's extra pass cost 12.5%; target for the online probe: <= 1% (issue 11). The loops "
         "take turns batch by batch, so that load from other processes hits them alike; the paired columns are "
         "medians of per-batch time ratios against the fixed loop's batch run next to it, in wall time and in "
         "process CPU time (95% confidence interval of the median). \"Own work\" is the CPU time spent inside "
         "LipschitzLR itself per step (the probe's forward hook, its optimizer pre-hook, sched.step() with the "
         "record decoding every 32 steps: a mean), against the fixed loop's median step.")


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace this benchmark's section of RESULTS.md (others' sections stay as they are)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if heading in text:
        before, rest = text.split(heading, 1)
        nxt = rest.find("\n## ")
        text = before.rstrip("\n") + "\n\n" + heading + "\n\n" + body.rstrip("\n") + "\n" + \
            ("" if nxt < 0 else rest[nxt:])
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{body}"
    path.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30, help="steps per timed epoch")
    ap.add_argument("--batch-size", type=int, default=256, help="the paper's MNIST batch size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-lr", type=float, default=0.05, help="cap so that no timing run diverges")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    loops, untrained, _ = measure(args)
    rows, figures = table(loops, args.batches)
    head = header(args, (time.perf_counter() - t_start) / 60)
    verdicts = "; ".join(verdict(m, f) for m, f in figures.items() if m != "exact")
    trap = trap_text(loops, untrained, args)
    body = f"{head}\n\n{rows}\n\nAgainst the target (<= 1%, paired, CPU time): {verdicts}.\n\n{trap}\n"
    print(body)
    if not args.no_write:
        write_section(ROOT / "RESULTS.md", HEADING, f"{INTRO}\n\n{body}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
