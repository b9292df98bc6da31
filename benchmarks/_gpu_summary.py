"""The GPU checks' figures as Markdown tables (``summary.md``), one function per step."""
from __future__ import annotations

import statistics

import _gpu_recipes as recipes


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def _num(x, fmt: str = ".3g") -> str:
    return "–" if x is None else format(x, fmt)


def machine(env: dict, smoke: bool) -> list[str]:
    if not env or "error" in env:
        return ["machine: unknown (the env step failed)"]
    smi = (env.get("nvidia_smi") or "").split(",")          # name, driver, memory
    driver = smi[1].strip() if len(smi) == 3 else "?"
    gpu = (f"{env.get('gpu')} ({env.get('memory_gib')} GiB, capability {env.get('capability')}), "
           f"driver {driver}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if "gpu" in env else "no GPU (CPU)")
    found = ", ".join(f"{k} {'found' if v else 'absent'}" for k, v in env["data"].items())
    return [f"- machine: {gpu}; {env['cpu']}, {env['cpus']} CPUs; torch {env['torch']}, Python {env['python']}",
            f"- data root: {env.get('data_root_from')} ({found}); commit {env.get('commit') or '?'}",
            *(["- **smoke run**: tiny sizes and fake images on the CPU; the figures test the script only"]
              if smoke else [])]


def sync(res: dict) -> list[str]:
    rows = ["| window | steps checked | no sync? | first sync at |", "|---|---|---|---|"]
    for name, v in {**res.get("loops", {}), "trainer (steps and batches)": res.get("trainer", {})}.items():
        rows.append(f"| {name} | {v.get('steps', '–')} | {'pass' if v.get('pass') else '**FAIL**'} | "
                    f"{v.get('at', '–')}{': ' + v['error'] if v.get('error') else ''} |")
    c = res.get("census", {})
    where = "; ".join(f"{k} ×{n}" for k, n in list(c.get("where", {}).items())[:8])
    return [f"Checked by {res.get('checked_by')}; StepLog.flush exempt (the claim: none between flushes).", "",
            *rows, "",
            f"Census of a {c.get('steps')}-step, {c.get('epochs')}-epoch trainer run ({c.get('what')}): "
            f"{c.get('by_bucket')}; between flushes per step: {c.get('per_step_between_flushes')}. "
            f"Where: {where or 'nowhere'}."]


def overhead(res: dict) -> list[str]:
    rows = ["| model, batch | loop | ms/step (device, median) | host ms/step | vs SGD (medians) "
            "| vs SGD (paired rounds) | <= 3%? |", "|---|---|---|---|---|---|---|"]
    for model, r in res.items():
        if not isinstance(r, dict) or "modes" not in r:
            continue
        for mode, m in r["modes"].items():
            met = "–" if mode == "sgd" else ("yes" if m["target_met"] else "**no**")
            rows.append(f"| {model}, {r['batch']} | {mode} | {m['ms_per_step']:.3f} | {m['host_ms_per_step']:.3f} | "
                        f"{_pct(m['overhead']) if mode != 'sgd' else '–'} | "
                        f"{_pct(m['paired_overhead']) if mode != 'sgd' else '–'} | {met} |")
    first = next((r for r in res.values() if isinstance(r, dict) and "steps" in r), {})
    return [f"Windows of {first.get('steps')} steps, {first.get('rounds')} rounds taking turns; data: "
            + ", ".join(f"{k} {v.get('data')}" for k, v in res.items() if isinstance(v, dict)) + ".", "", *rows]


def epochs(res: dict, compiled: dict | None) -> list[str]:
    rows = ["| run | epochs, s each | steady epoch, s (median of 2nd on) | <= 3 s? | compile, s | status |",
            "|---|---|---|---|---|---|"]
    for name, r in (("ResNet-20, bf16, channels_last, data on the device", res),
                    ("the same, compile=True", compiled)):
        if not r or "epoch_s" not in r:
            rows.append(f"| {name} | {(r or {}).get('error') or (r or {}).get('skipped') or 'not run'} | | | | |")
            continue
        rows.append(f"| {name} | {', '.join(f'{s:.2f}' for s in r['epoch_s'])} | {_num(r['steady_epoch_s'], '.2f')} | "
                    f"{'yes' if r['target_met'] else '**no**'} | {_num(r.get('compile_s'), '.1f')} | {r['status']} |")
    res = res or {}
    batch = res.get("config", {}).get("batch_size")
    return [f"Data: {res.get('data')}; {res.get('steps_per_epoch')} steps of {batch} per epoch; the epoch time "
            "includes its end (a flush that waits for the device, 512 test images evaluated).", "", *rows]


def mnist(res: dict) -> list[str]:
    if "skipped" in res or "error" in res:
        return [f"Not run: {res.get('skipped') or res.get('error')}"]
    rows = ["| run | status | epochs | s/epoch (median) | final train / val / test acc | lr range | grad_last > L |",
            "|---|---|---|---|---|---|---|"]
    for name, r in (("paper bound (as published), fp32", res["paper_bound"]),
                    ("strict bound, bf16 + channels_last", res["strict"])):
        ep = r["epochs"]
        last = ep[-1] if ep else {}
        accs = " / ".join(_num(last.get(k), ".4f") for k in ("train_acc", "val_acc", "test_acc")) if ep else "–"
        s = statistics.median(e["s"] for e in ep) if ep else None
        lr = "–" if not r["lr_range"] else f"{r['lr_range'][0]:.3g} – {r['lr_range'][1]:.3g}"
        rows.append(f"| {name} | {r['status']}{' (' + r['reason'] + ')' if r['reason'] else ''} | {len(ep)} | "
                    f"{_num(s, '.2f')} | {accs} | {lr} | {r['grad_over_L_steps']} of {r['steps_with_L']} |")
    return rows


def render(results: dict, *, smoke: bool) -> str:
    out = ["# GPU checks: summary", "", *machine(results.get("env", {}), smoke), ""]
    sections = (("No host sync per step", "sync", lambda r: sync(r)),
                ("Probe + LipschitzLR cost per step against plain fused SGD", "overhead", overhead),
                ("The recipes: optimizers, fp16 with a GradScaler, bf16", "recipes", recipes.render),
                ("ResNet-20 epoch of 50,000 images", "epoch", lambda r: epochs(r, results.get("compile"))),
                ("The paper's MNIST run", "mnist", mnist))
    for title, key, fn in sections:
        r = results.get(key)
        out += [f"## {title}", ""]
        if r is None:
            out += ["Not run.", ""]
        elif "error" in r or "skipped" in r and key != "mnist":
            out += [f"Not measured: {r.get('error') or r.get('skipped')}", ""]
        else:
            out += [*fn(r), ""]
    p = results.get("pytest")
    if p is not None:
        out += ["## Tests", "", f"`{p.get('command')}`: rc {p.get('rc')}, {p.get('summary') or p.get('error')}",
                *[f"- {line}" for line in p.get("failed", [])], ""]
    n = results.get("nccl")
    if n is not None:
        out += ["## torchrun, one process", "",
                f"backend {n.get('backend')}: rc {n.get('rc')}, status {n.get('status')}, {n.get('steps')} steps"
                f"{'; ' + n['error'] if n.get('error') else ''}", ""]
    return "\n".join(out)
