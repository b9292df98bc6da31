"""The same run in the app (in Chromium) and in the CLI, paired in one session (issue 24).

    .venv/bin/python benchmarks/bench_app_vs_cli.py [--pairs 3] [--epochs N] [--app-threads N] [--profile DIR]

The run: TrainConfig's defaults (digits, MLP, softmax_ce, strict bound per step), the app's
Start pressed with no change, and ``lipschitz-lab train`` with no flag but ``--store`` and
``--no-report``.  One app is served for the whole session; its page stays open in headless
Chromium (a person's browser), and runs alternate app, CLI / CLI, app, so that load from
other processes hits both alike.

Per run, two times:
  train   the trainer's own time: from the run's start to its last epoch's end (the epoch
          records' ``time``, read from each run store)
  whole   the app: from the click on Start to "finished" on the status line;
          the CLI: the whole process, Python's start and torch's import included
Target: the app's ``whole`` <= 1.25 x the CLI's ``whole`` (medians).
``--app-threads N`` passes ``--threads N`` to the app (default: the app's own default, one torch
thread fewer than the cores); the CLI keeps torch's default.
``--profile DIR`` records the app's kernel with py-spy (if installed) during the first app run.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_app import App  # noqa: E402  (the app in a subprocess, its URL read from its output)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TARGET = 1.25


def _field(panel, label: str):
    return panel.locator(f".widget-text:has(label:text-is('{label}')) input")


def open_app(browser, url: str, epochs: int | None):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(240_000)
    page.goto(url)
    page.locator(".lm-TabBar-tab", has_text="Live training").click()
    panel = page.locator(".lipschitz-training-panel")
    panel.locator("canvas").first.wait_for()
    if epochs is not None:
        _field(panel, "epochs").fill(str(epochs))
        _field(panel, "epochs").press("Enter")
        time.sleep(0.5)
    return page, panel


def app_run(page, panel, store: Path, profile: Path | None, kernel_pid: int | None) -> dict[str, float]:
    status = panel.locator(".lipschitz-status")
    spy = None
    if profile is not None and kernel_pid and shutil.which("py-spy"):
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(kernel_pid), "--threads", "--idle", "-r", "50",
                                "-f", "speedscope", "-o", str(profile / "app-kernel.speedscope.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    before = status.evaluate("el => el.textContent")
    t0 = time.perf_counter()
    panel.locator("button", has_text="Start").click()
    # the panel's last line, with its time, for this run (it names the run: not the last run's line;
    # a short run may pass "running" between two of the browser's polls)
    page.wait_for_function("([el, old]) => el.textContent !== old && "
                           "/^((finished|stopped|diverged).* steps in |failed|error)/.test(el.textContent)",
                           arg=[status.element_handle(), before], timeout=600_000)
    whole = time.perf_counter() - t0
    if spy is not None:
        spy.send_signal(signal.SIGINT)          # py-spy writes its file on SIGINT
        spy.wait(60)
    text = status.inner_text()
    found = re.search(r"run (r-\S+) · (\d+) steps in ([\d.]+) s", text)
    assert found and "finished" in text, text
    return {"whole": whole, "train": train_time(store, found[1]), "steps": int(found[2]), "said": text}


def cli_run(store: Path, epochs: int | None) -> dict[str, float]:
    cmd = [sys.executable, "-m", "lipschitz_lab", "train", "--store", str(store), "--no-report"]
    cmd += ["--epochs", str(epochs)] if epochs is not None else []
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=store.parent, timeout=900)
    whole = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-2000:]
    from lipschitz_lab.runs import RunStore
    (run,) = RunStore(store).list_runs()
    steps = len(RunStore(store).records(run["id"], "step"))
    return {"whole": whole, "train": train_time(store, run["id"]), "steps": steps,
            "said": out.stdout.strip().splitlines()[-1]}


def train_time(store: Path, run_id: str) -> float:
    """Seconds from the run's start to its last epoch's end (the trainer's epoch ``time``): the
    same clock in the app and in the CLI."""
    from lipschitz_lab.runs import RunStore
    epochs = RunStore(store).records(run_id, "epoch")
    return epochs[-1]["time"] if epochs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--app-threads", type=int, default=None, help="default: the app's")
    ap.add_argument("--profile", type=Path, default=None)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-vs-cli-"))
    threads = [] if args.app_threads is None else ["--threads", str(args.app_threads)]
    app = App([sys.executable, "-m", "lipschitz_lab", "app", "--no-browser", "--store", str(tmp / "app.db"),
               *threads], tmp)
    results: dict[str, list[dict]] = {"app": [], "cli": []}
    try:
        url = app.url()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page, panel = open_app(browser, url, args.epochs)
            kernels = app.kernels()
            for i in range(args.pairs):
                order = ("app", "cli") if i % 2 == 0 else ("cli", "app")
                for kind in order:
                    if kind == "app":
                        prof = args.profile if (args.profile and not results["app"]) else None
                        if prof:
                            prof.mkdir(parents=True, exist_ok=True)
                        r = app_run(page, panel, tmp / "app.db", prof, kernels[0].pid if kernels else None)
                    else:
                        folder = tmp / f"cli-{i}"
                        folder.mkdir()
                        r = cli_run(folder / "cli.db", args.epochs)
                    results[kind].append(r)
                    print(f"{kind}: {r['steps']} steps, train {r['train']:.2f} s, whole {r['whole']:.2f} s "
                          f"· {r['said'][-90:]}", file=sys.stderr, flush=True)
            browser.close()
    finally:
        if app.proc.poll() is None:
            app.interrupt()
        app.close()
    print(table(results, args))
    return 0


def table(results: dict[str, list[dict]], args) -> str:
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("train", "whole")} for k, v in results.items()}
    rng = {k: {m: (min(r[m] for r in v), max(r[m] for r in v)) for m in ("train", "whole")}
           for k, v in results.items()}
    ratio = med["app"]["whole"] / med["cli"]["whole"]
    command = " ".join([".venv/bin/python benchmarks/bench_app_vs_cli.py", *map(shlex.quote, sys.argv[1:])])
    lines = [f"Command: `{command}`", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} CPUs; {datetime.date.today()}; "
             f"{results['app'][0]['steps']} steps per run, {len(results['app'])} pairs.", "",
             "| | app (Chromium) median [min, max] | CLI median [min, max] | app / CLI |", "|---|---|---|---|"]
    for m, what in (("train", "the trainer's wall time, s"), ("whole", "click → finished / whole process, s")):
        a, c = med["app"][m], med["cli"][m]
        lines.append(f"| {what} | {a:.2f} [{rng['app'][m][0]:.2f}, {rng['app'][m][1]:.2f}] | "
                     f"{c:.2f} [{rng['cli'][m][0]:.2f}, {rng['cli'][m][1]:.2f}] | {a / c:.2f}× |")
    lines += ["", f"Target: app ≤ {TARGET}× CLI (whole): {'met' if ratio <= TARGET else 'NOT met'} ({ratio:.2f}×)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
