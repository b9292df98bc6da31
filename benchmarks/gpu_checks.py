"""The GPU checks: CUDA training, bf16 AMP, channels_last, NCCL and the paper's models at full size.

One script, run once on a machine with a CUDA GPU, that writes its figures as
JSON and as a Markdown section (``benchmarks/RESULTS.md`` carries what it printed).
Each section is timed and caught on its own, so one failure does not lose the
others, and sections after ``--budget`` seconds are skipped, not started.

Run (repo root; data under $LIPSCHITZ_LAB_DATA or ../shared/data):
    python benchmarks/gpu_checks.py --out OUT_DIR [--budget 420]
    python benchmarks/gpu_checks.py --smoke --out /tmp/gpu   # tiny sizes on the CPU, to test the script

Sections:
  env       torch, CUDA, the GPU
  pytest    the CUDA tests (tests/test_probe.py, test_scheduler.py, test_checkpoint.py; -k cuda)
  amp       one MNIST-CNN batch in fp32 and under bf16 autocast: K_z, grad_last, strict L
  amp_eval  the same with dropout off, over 8 batches: what bf16 alone changes
  sched_overhead  s/step of plain SGD, SGD + loss.item(), and LipschitzLR per step (MNIST CNN, ResNet-20)
  nccl      torchrun, 1 process, NCCL backend: `lipschitz-lab train` on digits
  mnist     the paper's MNIST setting (Table-1 CNN, full MNIST, augmentation, batch 256, 20 epochs):
            paper bound (as published), strict bound with AMP + channels_last, strict in fp32
  resnet164 full-size ResNet-164 (CIFAR-100 head, 1.74M parameters), batch 128, s/step in fp32 and
            bf16, each with and without channels_last
  cifar     ResNet-20 on the CIFAR-10 subset, the paper's adaptive setting (paper bound) and strict
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lipschitz_lab.losses import make_criterion  # noqa: E402
from lipschitz_lab.models import count_parameters, get_model  # noqa: E402
from lipschitz_lab.runs import RunStore  # noqa: E402
from lipschitz_lab.scheduler import LipschitzLR  # noqa: E402
from lipschitz_lab.trainer import train  # noqa: E402

RESULTS: dict[str, dict] = {}
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


def section(name: str, budget: float):
    """Decorator: run the section, record its seconds, catch and record its failure."""
    def wrap(fn):
        def run(*args, **kwargs):
            if elapsed() > budget:
                RESULTS[name] = {"skipped": f"budget of {budget:.0f} s spent at {elapsed():.0f} s"}
                print(f"== {name}: skipped (budget)", flush=True)
                return
            print(f"== {name} (at {elapsed():.0f} s)", flush=True)
            t = time.perf_counter()
            try:
                RESULTS[name] = fn(*args, **kwargs) or {}
            except Exception as exc:  # keep going: the next section may still work
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                print(traceback.format_exc(), flush=True)
            RESULTS[name]["seconds"] = round(time.perf_counter() - t, 1)
            print(f"   {name}: {json.dumps(RESULTS[name], default=str)[:1500]}", flush=True)
        return run
    return wrap


def deadline_stopper(seconds: float) -> tuple[threading.Event, callable]:
    """A stop event and a subscriber that sets it once ``seconds`` have passed (the run ends 'stopped')."""
    ev, end = threading.Event(), time.perf_counter() + seconds

    def sub(_record):
        if time.perf_counter() > end:
            ev.set()
    return ev, sub


def summarise(run, store: RunStore) -> dict:
    steps = store.records(run.run_id, kind="step")
    over = [r for r in steps if r.get("L") is not None and r.get("grad_last") is not None
            and r["grad_last"] > r["L"]]
    ratios = [r["grad_last"] / r["L"] for r in steps if r.get("L") and r.get("grad_last") is not None]
    prev, ep = 0.0, []
    for e in run.epochs:
        ep.append({"epoch": e["epoch"] + 1, "s": round(e["time"] - prev, 2), "lr": e["lr"],
                   "train_acc": e["train_acc"], "val_acc": e["val_acc"], "test_acc": e["test_acc"]})
        prev = e["time"]
    first = next((r for r in steps if r.get("K_z") is not None), None)
    return {"status": run.status, "reason": run.reason, "steps": run.steps, "wall_s": round(run.wall_time, 1),
            "epochs": ep, "grad_over_L_steps": len(over), "steps_with_L": len(ratios),
            "max_grad_over_L": max(ratios) if ratios else None,
            "first_K_z": first and first["K_z"], "first_lr": first and first["lr"],
            "lr_range": [min(r["lr"] for r in steps), max(r["lr"] for r in steps)] if steps else None}


def train_and_summarise(cfg: dict, store: RunStore, limit_s: float) -> dict:
    ev, sub = deadline_stopper(limit_s)
    run = train(cfg, store=store, subscribers=(sub,), stop_event=ev, progress=False)
    out = summarise(run, store)
    out["config"] = {k: cfg[k] for k in ("model", "bound", "recompute", "amp", "channels_last", "epochs",
                                        "batch_size", "weight_decay") if k in cfg}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=420.0, help="start no section after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (tests the script)")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    smoke = args.smoke
    dev = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke to test the script on the CPU", file=sys.stderr)
        return 2
    budget = args.budget
    store = RunStore(args.out / "gpu.db")
    workers = 0 if smoke else min(12, os.cpu_count() or 1)
    wanted = set(filter(None, args.only.split(",")))

    def on(name):
        return not wanted or name in wanted

    @section("env", budget)
    def env():
        out = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count()}
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                       cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                       nccl=".".join(map(str, torch.cuda.nccl.version())))
            try:
                out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                                    "--format=csv,noheader"], capture_output=True, text=True,
                                                   timeout=20).stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:
                out["nvidia_smi"] = str(exc)
        return out

    @section("pytest", budget)
    def pytest_cuda():
        log = args.out / "pytest_cuda.log"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "-rA",
               "tests/test_probe.py", "tests/test_scheduler.py", "tests/test_checkpoint.py"]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
        log.write_text(p.stdout + p.stderr)
        tail = [line for line in p.stdout.splitlines() if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR"))
                or " passed" in line or " failed" in line]
        return {"rc": p.returncode, "summary": tail[-12:]}

    @section("amp", budget)
    def amp():
        """One batch, same weights: K_z and grad_last under bf16 autocast against fp32."""
        torch.manual_seed(0)
        start = get_model("mnist_cnn", input_shape=(1, 28, 28), num_outputs=10).to(dev).train()
        x, y = torch.rand(256, 1, 28, 28, device=dev), torch.randint(0, 10, (256,), device=dev)
        crit = make_criterion("softmax_ce")
        out = {}
        for name, enabled in (("fp32", False), ("bf16", True)):
            model = copy.deepcopy(start)                           # the same weights for both
            opt = torch.optim.SGD(model.parameters(), lr=0.0)
            sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
            torch.manual_seed(1)                                   # the same dropout masks
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled and not smoke):
                logits = model(x)
                loss = crit(logits.float(), y)
            loss.backward()
            opt.step()
            sched.step()
            rec = sched.last_record
            out[name] = {k: rec.get(k) for k in ("K_z", "grad_last", "L", "lr")}
            opt.zero_grad(set_to_none=True)
            sched.close()
        out["rel_diff_K_z"] = abs(out["bf16"]["K_z"] - out["fp32"]["K_z"]) / out["fp32"]["K_z"]
        out["rel_diff_grad_last"] = abs(out["bf16"]["grad_last"] - out["fp32"]["grad_last"]) / out["fp32"]["grad_last"]
        out["bf16_L_covers_grad"] = out["bf16"]["L"] >= out["bf16"]["grad_last"]
        return out

    @section("amp_eval", budget)
    def amp_eval():
        """As ``amp``, with dropout off (eval mode: the same network in both precisions) over 8 batches:
        what bf16 alone changes in K_z, grad_last and the strict rate."""
        torch.manual_seed(0)
        start = get_model("mnist_cnn", input_shape=(1, 28, 28), num_outputs=10).to(dev).eval()
        crit = make_criterion("softmax_ce")
        diffs = {"K_z": [], "grad_last": [], "L": [], "lr": []}
        covered = 0
        for b in range(8):
            x = torch.rand(256, 1, 28, 28, device=dev)
            y = torch.randint(0, 10, (256,), device=dev)
            recs = {}
            for name, enabled in (("fp32", False), ("bf16", True)):
                model = copy.deepcopy(start)
                opt = torch.optim.SGD(model.parameters(), lr=0.0)
                sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled and not smoke):
                    loss = crit(model(x).float(), y)
                loss.backward()
                opt.step()
                sched.step()
                recs[name] = dict(sched.last_record)
                sched.close()
            for k in diffs:
                diffs[k].append(abs(recs["bf16"][k] - recs["fp32"][k]) / abs(recs["fp32"][k]))
            covered += recs["bf16"]["L"] >= recs["bf16"]["grad_last"]
        return {"batches": 8, "max_rel_diff": {k: max(v) for k, v in diffs.items()},
                "median_rel_diff": {k: sorted(v)[len(v) // 2] for k, v in diffs.items()},
                "bf16_L_covers_grad_batches": covered}

    @section("sched_overhead", budget)
    def sched_overhead():
        """s/step on the GPU: plain SGD (no sync), SGD + loss.item() per step (as a real loop, and the
        trainer, do), and LipschitzLR per step (+ loss.item()); modes interleaved, medians of 5 rounds."""
        out = {}
        n_warm, n_time, rounds = (1, 2, 1) if smoke else (10, 60, 5)
        for mname, shape, bs, k in (("mnist_cnn", (1, 28, 28), 256, 10), ("resnet20", (3, 32, 32), 128, 10)):
            torch.manual_seed(0)
            x = torch.rand(bs, *shape, device=dev)
            y = torch.randint(0, k, (bs,), device=dev)
            crit = make_criterion("softmax_ce")
            setups = {}
            for mode in ("fixed", "fixed_item", "lipschitz"):
                torch.manual_seed(0)
                model = get_model(mname, input_shape=shape, num_outputs=k).to(dev).train()
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                sched = (LipschitzLR(opt, model, "softmax_ce", num_classes=k, bound="strict", recompute="step",
                                     max_lr=0.05) if mode == "lipschitz" else None)
                setups[mode] = (model, opt, sched)
            times = {m: [] for m in setups}

            def steps(mode, n):
                model, opt, sched = setups[mode]
                for _ in range(n):
                    loss = crit(model(x), y)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    opt.zero_grad(set_to_none=True)
                    if mode != "fixed":
                        loss.item()
            for mode in setups:
                steps(mode, n_warm)
            for r in range(rounds):
                for mode in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    steps(mode, n_time)
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    times[mode].append((time.perf_counter() - t) / n_time)
            med = {m: sorted(v)[len(v) // 2] for m, v in times.items()}
            syncs = {}
            if torch.cuda.is_available():
                # device syncs per step, as CUDA's sync debug mode counts them (.item(), .tolist(), ...)
                import warnings
                for mode in setups:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        torch.cuda.set_sync_debug_mode("warn")
                        try:
                            steps(mode, 4)
                        finally:
                            torch.cuda.set_sync_debug_mode("default")
                    syncs[mode] = sum("synchroniz" in str(w.message) for w in caught) / 4
            out[mname] = {"batch": bs, **{f"{m}_ms": round(v * 1000, 3) for m, v in med.items()},
                          "syncs_per_step": syncs,
                          "lipschitz_vs_fixed_item": round(med["lipschitz"] / med["fixed_item"] - 1, 4),
                          "lipschitz_vs_fixed": round(med["lipschitz"] / med["fixed"] - 1, 4)}
            for _, _, sched in setups.values():
                if sched is not None:
                    sched.close()
        return out

    @section("nccl", budget)
    def nccl():
        db = args.out / "ddp.db"
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        cmd = [*torchrun, "-m", "lipschitz_lab", "train", "--dataset", "digits", "--epochs", "2",
               "--batch-size", "64", "--bound", "strict", "--store", str(db), "--no-report",
               "--device", dev]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
        (args.out / "nccl.log").write_text(p.stdout + p.stderr)
        out = {"rc": p.returncode, "tail": (p.stdout + p.stderr)[-600:]}
        if p.returncode == 0:
            s = RunStore(db)
            (info,) = s.list_runs()
            steps = s.records(info["id"], kind="step")
            out.update(status=info["status"], steps=len(steps), m_first=steps[0]["m"],
                       backend_expected="nccl" if torch.cuda.is_available() else "gloo")
        return out

    mnist_epochs = 1 if smoke else 20
    mnist_base = dict(dataset="mnist", model="mnist_cnn", loss="softmax_ce", batch_size=256, augment=True,
                      val_fraction=0.1, weight_decay=0.0, recompute="epoch", device=dev, checkpoint=False,
                      num_workers=workers, seed=0)
    if smoke:
        mnist_base.update(train_subset=512)

    @section("mnist_paper", budget)
    def mnist_paper():
        """The paper's own setting: paper bound, recomputed per epoch, fp32."""
        return train_and_summarise({**mnist_base, "bound": "paper", "epochs": mnist_epochs,
                                    "name": "gpu mnist paper"}, store, 60)

    @section("mnist_strict_amp", budget)
    def mnist_strict_amp():
        return train_and_summarise({**mnist_base, "bound": "strict", "epochs": mnist_epochs, "amp": True,
                                    "channels_last": True, "name": "gpu mnist strict amp"}, store, 150)

    @section("mnist_strict_fp32", budget)
    def mnist_strict_fp32():
        return train_and_summarise({**mnist_base, "bound": "strict", "epochs": 1 if smoke else 3,
                                    "name": "gpu mnist strict fp32"}, store, 40)

    @section("resnet164", budget)
    def resnet164():
        """Full-size ResNet-164 (100 classes), batch 128 of random images: s/step with LipschitzLR per step."""
        out = {}
        n_warm, n_time = (1, 2) if smoke else (5, 30)
        for name, amp_on, cl in (("fp32", False, False), ("fp32_channels_last", False, True),
                                 ("bf16", True, False), ("bf16_channels_last", True, True)):
            torch.manual_seed(0)
            model = get_model("resnet164", input_shape=(3, 32, 32), num_outputs=100).to(dev).train()
            if cl and not smoke:
                model = model.to(memory_format=torch.channels_last)
            out["parameters"] = count_parameters(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
            sched = LipschitzLR(opt, model, "softmax_ce", num_classes=100, bound="strict", recompute="step")
            crit = make_criterion("softmax_ce")
            bs = 8 if smoke else 128
            x = torch.rand(bs, 3, 32, 32, device=dev)
            if cl and not smoke:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 100, (bs,), device=dev)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            for i in range(n_warm + n_time):
                if i == n_warm:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp_on and not smoke):
                    loss = crit(model(x).float(), y)
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            per = (time.perf_counter() - t) / n_time
            rec = sched.last_record
            out[name] = {"s_per_step": round(per, 4), "epoch_50k_s": round(per * math.ceil(50000 / 128), 1),
                         "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                         if torch.cuda.is_available() else None,
                         "K_z": rec["K_z"], "L": rec["L"], "grad_last": rec["grad_last"], "lr": rec["lr"]}
            sched.close()
            del model, opt
        return out

    cifar_epochs = 1 if smoke else 30
    cifar_base = dict(dataset="cifar10_subset", model="resnet20", loss="softmax_ce", batch_size=128, augment=True,
                      val_fraction=0.1, weight_decay=1e-3, recompute="epoch", device=dev, checkpoint=False,
                      num_workers=workers, amp=True, channels_last=True, seed=0, epochs=cifar_epochs)
    if smoke:
        cifar_base.update(train_subset=256, amp=False, channels_last=False)

    @section("cifar_paper", budget)
    def cifar_paper():
        return train_and_summarise({**cifar_base, "bound": "paper", "name": "gpu cifar paper"}, store, 75)

    @section("cifar_strict", budget)
    def cifar_strict():
        return train_and_summarise({**cifar_base, "bound": "strict", "name": "gpu cifar strict"}, store, 75)

    for name, fn in (("env", env), ("amp", amp), ("amp_eval", amp_eval), ("sched_overhead", sched_overhead),
                     ("nccl", nccl), ("pytest", pytest_cuda),
                     ("mnist_paper", mnist_paper), ("mnist_strict_amp", mnist_strict_amp),
                     ("resnet164", resnet164), ("cifar_paper", cifar_paper), ("cifar_strict", cifar_strict),
                     ("mnist_strict_fp32", mnist_strict_fp32)):
        if on(name):
            fn()
        (args.out / "gpu_checks.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    print(f"== done in {elapsed():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
