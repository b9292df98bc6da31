"""How long `lipschitz-lab app` takes to come up: from the command's start to widgets a
person can use, in headless Chromium (already running, as a user's browser usually is).

    .venv/bin/python benchmarks/bench_app_startup.py [--runs 3]

Milestones, seconds after the command starts:
  url      the URL is printed (Voilà listens)
  page     the page's HTML has arrived (its kernel started and ran the one cell)
  tabs     the tab bar is drawn and takes clicks (the first widget live)
  control  the first tab's own control (the Derivations loss menu) takes input
  panels   all four tabs hold their panels (the rest arrive in the background)
Prints a Markdown table (median, min, max over the runs) and the machine.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PANELS = (".lipschitz-derivation-panel", ".lipschitz-training-panel", ".lipschitz-study-panel",
          ".lipschitz-runs-panel")


def one_run(browser, tmp: Path) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    t0 = time.monotonic()
    app = subprocess.Popen([sys.executable, "-m", "lipschitz_lab", "app", "--no-browser", "--store",
                            str(tmp / "runs.db")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, start_new_session=True)
    try:
        url = None
        while url is None:
            line = app.stdout.readline()
            if not line:
                raise RuntimeError(f"the app exited with {app.wait()}")
            url = (re.search(r"open (http://\S+)", line) or [None, None])[1]
        times = {"url": time.monotonic() - t0}
        page.on("requestfinished", lambda r: times.setdefault("page", time.monotonic() - t0) if r.url == url else None)
        page.goto(url, wait_until="commit", timeout=180_000)
        tab = page.locator(".lipschitz-app .lm-TabBar-tab", has_text="Runs")
        tab.wait_for(timeout=180_000)
        tab.click(trial=True, timeout=180_000)         # visible, stable, enabled, hit by a click
        times["tabs"] = time.monotonic() - t0
        times.setdefault("page", math.nan)
        menu = page.locator(".lipschitz-derivation-panel select").first
        menu.wait_for(timeout=180_000)
        menu.click(trial=True, timeout=180_000)
        times["control"] = time.monotonic() - t0
        page.wait_for_function("(sels) => sels.every((s) => document.querySelector(s))", arg=list(PANELS),
                               timeout=180_000)
        times["panels"] = time.monotonic() - t0
        return times
    finally:
        page.close()
        app.send_signal(signal.SIGINT)
        app.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    load = os.getloadavg()
    results = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        one_run(browser, Path(tmp) / "warm")                 # the OS's file cache, as after any first start
        for i in range(args.runs):
            results.append(one_run(browser, Path(tmp) / str(i)))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in results[-1].items()), file=sys.stderr)
        browser.close()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average before: "
          + " / ".join(f"{x:.1f}" for x in load))
    print("| milestone | median | min | max |\n|---|---|---|---|")
    for key in ("url", "page", "tabs", "control", "panels"):
        xs = [r[key] for r in results]
        print(f"| {key} | {statistics.median(xs):.2f} s | {min(xs):.2f} s | {max(xs):.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
