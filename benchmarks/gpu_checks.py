"""The GPU checks of issue 11: no host sync per step, the probe's cost per step, a ResNet-20 epoch, MNIST.

One prepared script for a lent GPU (an H200: about 5 minutes of the 15 a task
gets).  Each step is timed and caught on its own, so one failure loses no
other figure; no step starts after ``--budget`` seconds.  Writes, under --out:
``gpu_checks.json`` (every figure), ``summary.md`` (the tables for
benchmarks/RESULTS.md), ``gpu_checks.log`` (what it printed), ``pytest_cuda.log``
and ``runs.db`` (the trainer's runs).

Run (repo root; data from ``default_data_root()``: $LIPSCHITZ_LAB_DATA or ../shared/data):
    python benchmarks/gpu_checks.py --out benchmarks/gpu/run5
    python benchmarks/gpu_checks.py --pack-data runs/gpu_data.tar.gz        # here: the data, ~46 MB
    python benchmarks/gpu_checks.py --data-archive runs/gpu_data.tar.gz --out $OUT/run5   # there
    python benchmarks/gpu_checks.py --smoke --out /tmp/gpu   # tiny sizes, fake images, CPU: tests the script

Steps, in order:
  env       torch, CUDA, the GPU, the data found
  sync      a window of steps with a host sync made an error (CUDA's sync debug mode "error"):
            the hand-written loop (LipschitzLR per epoch, per step, smooth) and the trainer's
            steps and batches; then a census of every sync of a short trainer run
  overhead  ms per step of plain fused SGD against the same loop with probe + LipschitzLR
            (per epoch, per step, smooth bound): MNIST CNN batch 256, ResNet-20 batch 128
  recipes   the MNIST CNN with plain (for-loop) SGD, Adam without fused, fp16 + GradScaler and bf16:
            the cost of LipschitzLR and a sync census per step (per-step and per-epoch rates)
  epoch     the trainer: ResNet-20 epochs over 50,000 CIFAR-sized images (the CIFAR-10 subset's
            10,000 train images tiled), data on the device, bf16 autocast, channels_last
  mnist     the paper's MNIST run (preset mnist-paper): paper bound as published, then the strict
            bound for 20 epochs (bf16, channels_last, as the previous H200 figures)
  pytest    tests/test_no_sync.py and the CUDA tests (-k cuda) of the probe, scheduler,
            checkpoint and device-data tests
  nccl      torchrun, one process, NCCL: `lipschitz-lab train` on digits (the StepLog's all-reduce)
  compile   the epoch step again with compile=True (the compile time apart)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]      # the lent machine runs it from a bare copy of the tree

import _gpu_data as data  # noqa: E402
import _gpu_summary as summary  # noqa: E402
from _gpu_loops import MODELS, overhead  # noqa: E402
from _gpu_recipes import step_recipes  # noqa: E402
from _gpu_sync import step_sync  # noqa: E402
from _gpu_train import step_compile, step_epoch, step_mnist  # noqa: E402
from _gpu_ctx import GPU, SMOKE, Ctx  # noqa: E402
from _machine import cpu_model  # noqa: E402
from lipschitz_lab.data import DATA_ROOT_ENV, default_data_root  # noqa: E402
from lipschitz_lab.data.roots import DEVELOPER_DATA_ROOT  # noqa: E402
from lipschitz_lab.runs import RunStore  # noqa: E402

TEST_FILES = ("tests/test_probe.py", "tests/test_scheduler.py", "tests/test_checkpoint.py",
              "tests/test_device_data.py", "tests/test_no_sync.py")


def commit() -> str | None:
    """HEAD, with "+changes" when the working tree differs from it (None: no git here)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return (head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")) or None


# -- the steps (sync: _gpu_sync; epoch, mnist, compile: _gpu_train) ---------------------------------
def step_env(ctx: Ctx) -> dict:
    root = default_data_root()
    found_by = ("$LIPSCHITZ_LAB_DATA" if os.environ.get(DATA_ROOT_ENV) else
                "../shared/data beside the checkout" if root == DEVELOPER_DATA_ROOT else "the user data folder")
    out = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
           "cpus": os.cpu_count(), "device": str(ctx.device), "sizes": asdict(ctx.sizes),
           "data_root": str(root), "data_root_from": found_by, "data": {s: data.available(s) for s in data.NEEDS}}
    out["commit"] = commit()
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                                "--format=csv,noheader"], capture_output=True, text=True,
                                               timeout=20).stdout.strip()
    return out


def step_overhead(ctx: Ctx) -> dict:
    sz, out = ctx.sizes, {}
    for model, (_shape, source, _batch) in MODELS.items():
        source = data.pick(source, ctx.smoke)
        batches = data.device_batches(source, sz.batch[model], sz.pool, ctx.device)
        out[model] = {"data": source, **overhead(model, batches, ctx.device, steps=sz.overhead_steps,
                                                 rounds=sz.overhead_rounds, warm=sz.overhead_warm)}
    return out


def step_pytest(ctx: Ctx) -> dict:
    log = ctx.out / "pytest_cuda.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "-k", "cuda or no_sync",
           *TEST_FILES, *(["--collect-only"] if ctx.smoke else [])]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log.write_text(p.stdout + p.stderr)
    lines = p.stdout.splitlines()
    return {"rc": p.returncode, "command": " ".join(["python", *cmd[1:]]),
            "summary": next((ln for ln in reversed(lines) if " in " in ln and ln.strip()), ""),
            "failed": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:12]}


def step_nccl(ctx: Ctx) -> dict:
    """torchrun, one process: ``lipschitz-lab train`` on digits (NCCL on CUDA, gloo on the CPU); the
    StepLog agrees on the first bad step with one all-reduce per flush, so this is its NCCL path."""
    db = ctx.out / "ddp.db"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
           "lipschitz_lab", "train", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--bound",
           "strict", "--store", str(db), "--no-report", "--device", ctx.device.type]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    (ctx.out / "nccl.log").write_text(p.stdout + p.stderr)
    out = {"rc": p.returncode, "backend": "nccl" if ctx.cuda else "gloo", "tail": (p.stdout + p.stderr)[-400:]}
    if p.returncode == 0:
        store = RunStore(db)
        (info,) = store.list_runs()
        out.update(status=info["status"], steps=len(store.records(info["id"], kind="step")))
    return out


STEPS = (("env", step_env), ("sync", step_sync), ("overhead", step_overhead), ("recipes", step_recipes),
         ("epoch", step_epoch),
         ("mnist", step_mnist), ("pytest", step_pytest), ("nccl", step_nccl), ("compile", step_compile))


# -- running ------------------------------------------------------------------------------------
def run_step(ctx: Ctx, name: str, fn, budget: float) -> None:
    """Run one step: its result or its error, and its seconds, into ``ctx.results``."""
    if ctx.elapsed() > budget:
        ctx.results[name] = {"skipped": f"budget of {budget:.0f} s spent at {ctx.elapsed():.0f} s"}
        print(f"== {name}: skipped (budget)", flush=True)
        return
    print(f"== {name} (at {ctx.elapsed():.0f} s)", flush=True)
    t = time.perf_counter()
    try:
        ctx.results[name] = fn(ctx) or {}
    except Exception as exc:  # keep going: the next step may still work
        ctx.results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(traceback.format_exc(), flush=True)
    ctx.results[name]["seconds"] = round(time.perf_counter() - t, 1)
    print(f"   {name}: {json.dumps(ctx.results[name], default=str)[:2000]}", flush=True)
    (ctx.out / "gpu_checks.json").write_text(json.dumps(ctx.results, indent=1, default=str))


class Tee:
    """A stream that also writes into a log file."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stream.flush()


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for the JSON, the summary and the logs")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, fake images, CPU (tests the script)")
    ap.add_argument("--budget", type=float, default=480.0, help="start no step after this many seconds")
    ap.add_argument("--only", default="", help=f"comma-separated steps ({', '.join(n for n, _ in STEPS)})")
    ap.add_argument("--data-archive", type=Path, help="unpack this archive (--pack-data's) as the data root")
    ap.add_argument("--pack-data", type=Path, metavar="FILE", help="write the data archive and exit")
    args = ap.parse_args(argv)
    if args.pack_data is None and args.out is None:
        ap.error("--out is required (or --pack-data FILE)")
    unknown = set(filter(None, args.only.split(","))) - {n for n, _ in STEPS}
    if unknown:
        ap.error(f"--only: unknown step(s) {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.pack_data is not None:
        print(f"wrote {data.pack(args.pack_data)} ({args.pack_data.stat().st_size / 2**20:.0f} MiB)")
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke to test the script on the CPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "gpu_checks.log", "w", encoding="utf-8")
    sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    if args.data_archive is not None:     # beside --out, not in it: what is under $OUT travels back
        print(f"data root: {data.unpack(args.data_archive, Path(tempfile.mkdtemp(prefix='gpu_checks_data_')))}")
    data.register()
    if args.smoke:
        torch.set_num_threads(1)     # a shared CPU: two threads that wait on each other are 10x slower
    ctx = Ctx(args.out, args.smoke, SMOKE if args.smoke else GPU,
              torch.device("cpu" if args.smoke else "cuda"), RunStore(args.out / "runs.db"))
    wanted = set(filter(None, args.only.split(",")))
    for name, fn in STEPS:
        if not wanted or name in wanted:
            run_step(ctx, name, fn, args.budget)
    text = summary.render(ctx.results, smoke=args.smoke)
    (args.out / "summary.md").write_text(text)
    print(text)
    print(f"== done in {ctx.elapsed():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
