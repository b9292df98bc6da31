"""Full MNIST, the paper's Table-1 CNN, LipschitzLR (paper bound, per epoch), 3 epochs on the CPU.

Run: .venv/bin/python benchmarks/bench_mnist_cnn.py [--epochs 3] [--data-root DIR]
(data root: ``default_data_root()`` unless given: $LIPSCHITZ_LAB_DATA, else ../shared/data beside the checkout)
Prints per-epoch seconds, lr and accuracies; appends a section to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from _machine import cpu_model
from lipschitz_lab.config import TrainConfig
from lipschitz_lab.trainer import train

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-root", default=None, help="the folder holding MNIST/ (default: default_data_root())")
    ap.add_argument("--bound", default="paper")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cfg = TrainConfig(dataset="mnist", model="mnist_cnn", loss="softmax_ce", batch_size=256,
                      epochs=args.epochs, bound=args.bound, recompute="epoch", data_root=args.data_root,
                      augment=True, val_fraction=0.1, checkpoint=False, device="cpu",
                      name=f"bench mnist_cnn {args.bound}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = train(cfg, store=Path(tmp) / "bench.db", progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    lines = ["| epoch | seconds | lr (in force) | train acc | val acc | test acc |", "|---|---|---|---|---|---|"]
    prev = 0.0
    for e in run.epochs:
        lines.append(f"| {e['epoch'] + 1} | {e['time'] - prev:.1f} | {e['lr']:.4g} | {e['train_acc']:.4f} | "
                     f"{e['val_acc']:.4f} | {e['test_acc']:.4f} |")
        prev = e["time"]
    table = "\n".join(lines)
    print(table)
    print(f"status {run.status} {run.reason or ''}; wall {wall:.0f} s")
    if args.no_write:
        return
    cmd = "cd <repo> && .venv/bin/python benchmarks/bench_mnist_cnn.py" + \
        (f" --epochs {args.epochs}" if args.epochs != 3 else "") + (f" --bound {args.bound}" if args.bound != "paper" else "")
    section = (f"\n## Full MNIST, Table-1 CNN, LipschitzLR ({args.bound} bound, per epoch), {args.epochs} epochs, CPU\n\n"
               f"- command: `{cmd}`\n- machine: {cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU\n"
               f"- data: full MNIST from `{args.data_root or 'default_data_root()'}` (54,000 train / 6,000 validation / 10,000 test), "
               f"paper augmentation, batch 256\n- status: {run.status}{' (' + run.reason + ')' if run.reason else ''}; "
               f"total wall time {wall:.0f} s (includes evaluation)\n\n{table}\n")
    with open(HERE / "RESULTS.md", "a") as fh:
        fh.write(section)


if __name__ == "__main__":
    main()
