"""The digits-quick study on the local backend and on a local Ray cluster: wall time side by side.

Run: .venv/bin/python benchmarks/bench_study_backends.py [--workers 2] [--rounds 2] [--policies ...] [--seeds ...]

One invocation, one machine: each backend trains the same study into a fresh store of its own
(a temp folder), one after the other in this process; ``--rounds N`` alternates the order
(local then ray, ray then local, ...) so that a change in the machine's load hits both, and the
table gives every round and the medians.  ``local``: ``--workers`` worker processes,
one torch thread each, forked from a fork server that imported torch and the lab once (until
issue 22 each was spawned and imported them itself; the section in RESULTS.md was measured so)
(with ``--inline``, also this process alone); ``ray``: a local
cluster of ``--workers`` CPUs started by ``run_study`` itself, one CPU and one torch thread a
run.  Ray's start-up is the time ``run_study`` spends starting the cluster until its hub actor
answers (``StudyResult.startup_s``); the first task on each Ray worker also starts a Python
process (imports torch and lipschitz_lab), as each of the local pool's processes does, and
that is in both studies' times.  Prints a Markdown section for benchmarks/RESULTS.md.

``--ray-import-stub`` (the default) gives the cluster's processes a stub ``rfc3987_syntax``: in
this venv jsonschema imports it in every Ray process and it builds an Earley parser (~3 s of
CPU), which on a busy 2-core machine makes Ray's dashboard agent miss the raylet's fixed 15 s
start deadline (ray-project/ray#65983).  ``--no-ray-import-stub`` measures the venv as it is.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model

STUB = 'raise ImportError("rfc3987_syntax: skipped in the benchmark\'s Ray cluster")\n'


def _run(spec, store_path, **kwargs) -> dict:
    from lipschitz_lab.studies.runner import run_study
    t0 = time.perf_counter()
    result = run_study(spec, store_path, **kwargs)
    wall = time.perf_counter() - t0
    bad = [o for o in result.outcomes if o.status not in ("finished", "diverged")]
    if bad:
        raise SystemExit(f"{kwargs.get('backend', 'local')}: {len(bad)} runs did not finish, e.g. {bad[0]}")
    return {"wall": wall, "startup": result.startup_s, "runs": len(result.trained)}


def _stub_folder() -> str:
    folder = tempfile.mkdtemp(prefix="ray-stub-")
    Path(folder, "rfc3987_syntax.py").write_text(STUB)
    return folder


def main() -> int:
    from lipschitz_lab.studies.spec import select, study_preset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="local processes = Ray CPUs = runs at once")
    ap.add_argument("--policies", nargs="+", help="a cut of the study (default: all of digits-quick)")
    ap.add_argument("--seeds", nargs="+", type=int, help="default: the study's (0 1)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, alternating which backend goes first")
    ap.add_argument("--inline", action="store_true", help="also time the local backend in this process alone")
    ap.add_argument("--ray-import-stub", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()

    spec = study_preset("digits-quick")
    if args.policies:
        spec = spec.replace(policies=select(args.policies))
    if args.seeds:
        spec = spec.replace(seeds=args.seeds)
    n = len(spec.runs())
    print(f"digits-quick: {n} runs, {args.workers} at once", file=sys.stderr)
    if args.ray_import_stub:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_stub_folder(), os.environ.get("PYTHONPATH")) if p)
    runs = {}
    if args.inline:
        runs["local, this process"] = {"workers": 1}
    runs[f"local, {args.workers} processes"] = {"workers": args.workers}
    runs[f"ray, local cluster of {args.workers} CPUs"] = {"backend": "ray", "workers": args.workers}
    rows: dict[str, list[dict]] = {name: [] for name in runs}
    load = [os.getloadavg()[0]]
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
                rows[name].append(_run(spec, Path(tmp, "s.db"), **runs[name]))
            print(f"round {round_ + 1} {name}: {rows[name][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    print(_section(args, spec, n, rows, load))
    return 0


def _section(args, spec, n: int, rows: dict, load: list[float]) -> str:
    import ray
    import torch
    from statistics import median
    cmd = "cd <repo> && .venv/bin/python benchmarks/bench_study_backends.py"
    for flag, value, default in (("--workers", args.workers, 2), ("--rounds", args.rounds, 1)):
        cmd += f" {flag} {value}" if value != default else ""
    cmd += " --policies " + " ".join(args.policies) if args.policies else ""
    cmd += " --seeds " + " ".join(map(str, args.seeds)) if args.seeds else ""
    cmd += " --inline" if args.inline else ""
    cmd += "" if args.ray_import_stub else " --no-ray-import-stub"
    base = median(r["wall"] for r in rows[f"local, {args.workers} processes"])
    lines = [f"Command: `{cmd}`", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}, "
             f"CPU; 1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end. "
             f"{n} runs ({len(spec.policies)} policies x {len(spec.seeds)} seeds, 4 epochs each).", "",
             "| backend | wall (s), each round | median wall (s) | of it, start-up (s) | median / local pool |",
             "|---|---|---|---|---|"]
    for name, rs in rows.items():
        each = ", ".join(f"{r['wall']:.1f}" for r in rs)
        wall = median(r["wall"] for r in rs)
        lines.append(f"| {name} | {each} | {wall:.1f} | {median(r['startup'] for r in rs):.1f} | {wall / base:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
