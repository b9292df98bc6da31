"""What the live training panel costs a run: the same run with and without it attached.

"With": exactly the notebook's arrangement.  An asyncio loop runs in the main
thread (as the kernel's does); ``TrainingPanel.start`` is called on it, so the
training thread feeds the panel's Bridge and the loop applies batches to the
Bokeh sources and widgets every 0.5 s.  The BokehModel has no
front end here, but it still serialises every patch it would send.
"Without": the same ``train()`` call in a thread of its own, no subscriber, the
loop idle meanwhile.
Both write to a run store, as every run does.  Runs alternate (with, without /
without, with), so that load from other processes hits both alike.

Run: .venv/bin/python benchmarks/bench_panel_overhead.py [--repeats 5] [--epochs 20] [--threads N]
     [--append benchmarks/RESULTS.md]
Target: overhead <= 5%.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from _machine import cpu_model
from lipschitz_lab.trainer import train
from lipschitz_lab.ui.panel_training import TrainingPanel


async def _until_done(thread: threading.Thread) -> None:
    # the kernel's loop between cells: idle, waking for timers and messages
    while thread.is_alive():
        await asyncio.sleep(0.05)


def time_apply(panel: TrainingPanel) -> list[float]:
    """Wrap the panel's apply function; the list collects each batch's seconds on the loop."""
    spent: list[float] = []
    apply = panel._apply

    def timed(batch):
        t = time.perf_counter()
        apply(batch)
        spent.append(time.perf_counter() - t)
    panel._apply = timed
    return spent


async def with_panel(panel: TrainingPanel, spent: list[float]) -> dict:
    spent.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    panel.start()                          # on this (main) thread's running loop: the Bridge drains here
    await _until_done(panel._thread)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await asyncio.sleep(0.3)               # the last batch, as the loop would apply it
    panel.flush()
    assert panel.run is not None and panel.run.status == "finished", panel.status_text
    drawn = panel.figures.steps.data["step"]
    # every step arrived: the last one drawn is within one stride of the end (long runs are thinned)
    assert len(drawn) and drawn[-1] >= panel.run.steps - panel.figures.stride, (drawn[-1:], panel.run.steps)
    return {"wall": wall, "cpu": cpu, "train": panel.run.wall_time, "steps": panel.run.steps,
            "batches": panel._bridge.batches,
            "rows": len(drawn), "apply": sum(spent), "apply_max": max(spent)}


async def without_panel(cfg: dict, store: Path) -> dict:
    out = {}
    t0, c0 = time.perf_counter(), time.process_time()
    worker = threading.Thread(target=lambda: out.setdefault("run", train(cfg, store=store, progress=False)),
                              name="train", daemon=True)
    worker.start()
    await _until_done(worker)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "train": out["run"].wall_time, "steps": out["run"].steps, "batches": 0}


def measure(args, cfg: dict) -> dict[str, list[dict]]:
    """Runs with and without the panel, alternating; every run's figures."""
    results: dict[str, list[dict]] = {"with": [], "without": []}

    async def run_all(store: Path) -> None:
        await without_panel({**cfg, "epochs": 1}, store)          # warm-up: imports, data, allocator
        panel = TrainingPanel(store, **cfg)      # one panel, Start pressed once per repeat, as in a notebook
        spent = time_apply(panel)
        for i in range(args.repeats):
            order = ("with", "without") if i % 2 == 0 else ("without", "with")
            for kind in order:
                r = await (with_panel(panel, spent) if kind == "with" else without_panel(cfg, store))
                results[kind].append(r)
                print(f"repeat {i + 1}/{args.repeats} {kind:>7}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU, "
                      f"{r['train']:.2f} s "
                      f"training, {r['steps']} steps, {r['batches']} batches applied", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_all(Path(tmp) / "bench.db"))   # the loop in the main thread, as in a kernel
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--append", metavar="RESULTS.md", help="append the figures as a Markdown section")
    args = ap.parse_args(argv)
    cfg = dict(dataset="digits", model="mlp", loss="softmax_ce", recompute="step", epochs=args.epochs,
               batch_size=args.batch_size, checkpoint=False, name="bench")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = measure(args, cfg)
    text = "\n".join(report(args, argv, results, started))
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write(text)
    return 0


def report(args, argv, results: dict[str, list[dict]], started: float) -> list[str]:
    """The Markdown section: medians, the paired ratio, the apply function's share."""
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("wall", "cpu", "train", "batches")}
           for k, v in results.items()}
    apply_s = statistics.median(r["apply"] for r in results["with"])
    apply_max = statistics.median(r["apply_max"] for r in results["with"])
    apply_share = statistics.median(r["apply"] / r["train"] for r in results["with"])
    pairs = [w["wall"] / o["wall"] for w, o in zip(results["with"], results["without"])]
    overhead = med["with"]["wall"] / med["without"]["wall"] - 1
    cpu_overhead = med["with"]["cpu"] / med["without"]["cpu"] - 1
    paired = statistics.median(pairs) - 1
    steps = results["with"][0]["steps"]
    lines = [
        "",
        "## Live training panel overhead (issue 5)",
        "",
        "The same digits/mlp run with the live panel attached (one panel, Start pressed once per repeat; its "
        "Bridge subscriber, and the apply "
        "function on the main thread's asyncio loop, batches every 0.5 s, as in the notebook; the "
        "BokehModel serialises every patch but has no browser) and without it (the same `train()` in a "
        "thread). Runs alternate; medians of the repeats. Target: overhead <= 5%.",
        "",
        f"- command: `cd <repo> && .venv/bin/python {' '.join(shlex.quote(a) for a in ['benchmarks/bench_panel_overhead.py', *(argv if argv is not None else sys.argv[1:])])}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, CPU only; "
        f"torch {torch.__version__}, Python {platform.python_version()}; "
        f"{datetime.date.today().isoformat()}; the benchmark took {(time.perf_counter() - started) / 60:.1f} min",
        f"- run: digits, mlp, softmax_ce, recompute=step, batch {args.batch_size}, {args.epochs} epochs = "
        f"{steps} steps ({results['with'][0]['rows']} of them drawn: the panel thins long runs to ~4,000 "
        f"points), {args.repeats} repeats of each",
        "",
        "| | wall s (median) | process CPU s (median) | training loop s (median) | batches applied (median) |",
        "|---|---|---|---|---|",
        f"| without panel | {med['without']['wall']:.2f} | {med['without']['cpu']:.2f} | "
        f"{med['without']['train']:.2f} | – |",
        f"| with panel | {med['with']['wall']:.2f} | {med['with']['cpu']:.2f} | {med['with']['train']:.2f} | "
        f"{med['with']['batches']:.0f} |",
        "",
        f"**Overhead: {overhead:+.1%}** of the median wall time (paired, median of per-repeat ratios: "
        f"{paired:+.1%}). Per-repeat walls, with: "
        + ", ".join(f"{r['wall']:.2f}" for r in results["with"]) + "; without: "
        + ", ".join(f"{r['wall']:.2f}" for r in results["without"]) + ". "
        f"CPU time of the whole process (both threads): {cpu_overhead:+.1%}.",
        "",
        f"Time the loop spent in the apply function (wall clock around each call): median "
        f"**{apply_s:.3f} s per run = {apply_share:.1%} of the training time** (the largest batch: "
        f"{apply_max * 1000:.0f} ms; a panel's first run of a model also builds the per-layer lines, ~0.1 s "
        "once). That is about what the panel "
        "can take from the training thread (it holds the GIL meanwhile); the wall times above also carry "
        "the spread from other processes sharing the two cores.",
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
