"""A study's results, read back from the run store: tidy frames, one table, a Markdown summary.

Everything here is computed from the store's records, never from the
in-memory results of a run, so a table made tomorrow from the same store
(or while the study is still running) says the same thing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lipschitz_lab.runs import RunStore
from lipschitz_lab.runs.verdict import kinds_summary, run_verdict
from lipschitz_lab.studies.spec import PolicyEntry, StudySpec
from lipschitz_lab.studies.why import why_empty

__all__ = ["StudyRun", "study_runs", "epoch_frame", "step_frame", "study_table", "ranking",
           "summary_markdown", "table_text"]

#: the accuracy metrics of the table; each gets final/best x mean/std columns
METRICS = ("val_acc", "test_acc")


@dataclass
class StudyRun:
    policy: str
    family: str          # lipschitz | lipschitz-scaled | baseline
    seed: int
    run_id: str
    status: str
    reason: str | None


def _family(config: dict[str, Any]) -> str:
    over = {"lr_policy": config.get("lr_policy", "lipschitz"), "lr_scale": config.get("lr_scale", 1.0)}
    return PolicyEntry("x", over).family


def study_runs(store: RunStore, study: StudySpec | str) -> list[StudyRun]:
    """The runs of a study in the store.

    With a :class:`StudySpec`, exactly the runs of its current plan (by key: a
    run of an older plan with, say, fewer epochs is left out); with a study
    name, every run the store holds under that name.
    """
    out = []
    if isinstance(study, StudySpec):
        families = {p.name: p.family for p in study.policies}
        for plan in study.runs():
            run = store.find_run(plan.key)
            if run is not None:
                out.append(StudyRun(plan.policy, families[plan.policy], plan.seed, run["id"],
                                    run["status"], run["reason"]))
    else:
        for run in store.list_runs(study=study):
            cfg = run["config"]
            out.append(StudyRun(run["name"] or cfg.get("name") or run["id"], _family(cfg),
                                int(cfg.get("seed", 0)), run["id"], run["status"], run["reason"]))
    return out


def _num(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def epoch_frame(store: RunStore, study: StudySpec | str, runs: list[StudyRun] | None = None) -> pd.DataFrame:
    """One row per epoch record: policy, family, seed, run_id, status, epoch, lr, losses,
    accuracies, ``time`` and ``cum_time``: the seconds from the run's start to the end of the
    epoch's evaluation (the trainer's epoch ``time``, which counts from the start; a resumed run
    carries its earlier time over)."""
    rows = []
    for run in study_runs(store, study) if runs is None else runs:
        for rec in store.records(run.run_id, "epoch"):
            cum = _num(rec.get("time"))
            rows.append({"policy": run.policy, "family": run.family, "seed": run.seed,
                         "run_id": run.run_id, "status": run.status,
                         "epoch": rec.get("epoch"), "step": rec.get("step"), "lr": _num(rec.get("lr")),
                         **{k: _num(rec.get(k)) for k in ("train_loss", "train_acc", "val_loss", "val_acc",
                                                          "test_loss", "test_acc", "time")},
                         "extra_steps": rec.get("extra_steps"), "cum_time": cum})
    cols = ["policy", "family", "seed", "run_id", "status", "epoch", "step", "lr", "train_loss", "train_acc",
            "val_loss", "val_acc", "test_loss", "test_acc", "time", "extra_steps", "cum_time"]
    return pd.DataFrame(rows, columns=cols)


def step_frame(store: RunStore, study: StudySpec | str, runs: list[StudyRun] | None = None,
               fields: tuple[str, ...] = ("lr", "loss", "acc")) -> pd.DataFrame:
    """One row per step record: policy, family, seed, run_id, step, epoch and ``fields``."""
    rows = []
    for run in study_runs(store, study) if runs is None else runs:
        for rec in store.records(run.run_id, "step"):
            rows.append({"policy": run.policy, "family": run.family, "seed": run.seed, "run_id": run.run_id,
                         "step": rec.get("step"), "epoch": rec.get("epoch"),
                         **{f: _num(rec.get(f)) for f in fields}})
    return pd.DataFrame(rows, columns=["policy", "family", "seed", "run_id", "step", "epoch", *fields])


def _per_run(epochs: pd.DataFrame, steps: pd.DataFrame, run: StudyRun, target: float | None) -> dict[str, Any]:
    e = epochs[epochs.run_id == run.run_id].sort_values("epoch")
    s = steps[steps.run_id == run.run_id]
    row: dict[str, Any] = {"policy": run.policy, "family": run.family, "seed": run.seed,
                           "run_id": run.run_id, "status": run.status}
    for m in METRICS:
        vals = e[m].to_numpy(float)
        row[f"final_{m}"] = vals[-1] if len(vals) else math.nan
        row[f"best_{m}"] = np.nanmax(vals) if np.isfinite(vals).any() else math.nan
    # the target is read on validation accuracy (test accuracy when a run has no validation split)
    acc = e["val_acc"] if e["val_acc"].notna().any() else e["test_acc"]
    hit = np.flatnonzero(acc.to_numpy(float) >= target) if target is not None else []
    row["epochs_to_target"] = float(e["epoch"].iloc[hit[0]]) + 1 if len(hit) else math.nan
    row["time_to_target"] = float(e["cum_time"].iloc[hit[0]]) if len(hit) else math.nan
    row["train_time"] = float(e["cum_time"].iloc[-1]) if len(e) else math.nan
    lr = s["lr"].to_numpy(float)
    lr = lr[np.isfinite(lr)]
    row["lr_min"], row["lr_max"] = (lr.min(), lr.max()) if len(lr) else (math.nan, math.nan)
    extra = e["extra_steps"].dropna()
    row["steps"] = int(len(s))
    row["extra_steps"] = int(extra.iloc[0]) if len(extra) else 0
    return row


def study_table(store: RunStore, study: StudySpec | str, target_acc: float | None = None) -> pd.DataFrame:
    """One row per policy, from the store.

    Columns: ``policy``, ``family``, ``runs``, ``diverged``, ``failed``,
    ``final_/best_{val,test}_acc_{mean,std}`` (over seeds; std is the sample
    std, NaN for one seed), ``epochs_to_target_mean`` and
    ``time_to_target_mean`` (over the seeds that reached ``target_acc`` on
    validation accuracy; NaN when none did), ``target_reached`` ("k/n"),
    ``lr_min``/``lr_max`` (over every step of every seed), ``steps`` and
    ``extra_steps`` (mean per run; the LR range test's iterations are extra),
    ``train_time_mean`` (seconds to the last epoch's end), ``rank`` (1 = best mean final
    test accuracy; validation when there is no test), ``why`` (its runs with no epoch, e.g.
    ``seed 0 failed: <the error>``; the text table shows it in an empty row) and ``run_ids``.
    Policies come in the study's order.
    """
    if target_acc is None and isinstance(study, StudySpec):
        target_acc = study.target_acc
    runs = study_runs(store, study)
    epochs, steps = epoch_frame(store, study, runs), step_frame(store, study, runs, fields=("lr",))
    per_run = pd.DataFrame([{**_per_run(epochs, steps, r, target_acc),
                             "verdict": run_verdict(store, r.run_id).kind} for r in runs])
    rows = []
    order = [p.name for p in study.policies] if isinstance(study, StudySpec) else list(dict.fromkeys(r.policy for r in runs))
    for policy in order:
        g = per_run[per_run.policy == policy] if len(per_run) else per_run
        if not len(g):
            continue
        row: dict[str, Any] = {"policy": policy, "family": g.family.iloc[0], "runs": len(g),
                               "diverged": int((g.status == "diverged").sum()),
                               "failed": int((g.status == "failed").sum())}
        for m in METRICS:
            for kind in ("final", "best"):
                col = g[f"{kind}_{m}"].astype(float)
                row[f"{kind}_{m}_mean"] = col.mean()
                row[f"{kind}_{m}_std"] = col.std()
        reached = g["epochs_to_target"].notna()
        row["epochs_to_target_mean"] = g["epochs_to_target"].mean()
        row["time_to_target_mean"] = g["time_to_target"].mean()
        row["target_reached"] = f"{int(reached.sum())}/{len(g)}" if target_acc is not None else ""
        row["lr_min"], row["lr_max"] = g["lr_min"].min(), g["lr_max"].max()
        row["steps"] = g["steps"].mean()
        row["extra_steps"] = g["extra_steps"].mean()
        row["train_time_mean"] = g["train_time"].mean()
        row["verdict"] = kinds_summary(list(g.verdict))       # healthy, collapsed, blew up, ...
        row["why"] = why_empty(g, [r for r in runs if r.policy == policy])   # the runs with no epoch
        row["run_ids"] = ", ".join(g.run_id)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        key = table["final_test_acc_mean"].where(table["final_test_acc_mean"].notna(), table["final_val_acc_mean"])
        table["rank"] = key.rank(ascending=False, method="min", na_option="bottom").astype(int)
    table.attrs["target_acc"] = target_acc
    return table


def acc_col(table: pd.DataFrame) -> str:
    """The accuracy the ranking uses: final test accuracy, or validation when no run has a test split."""
    return "final_test_acc_mean" if table["final_test_acc_mean"].notna().any() else "final_val_acc_mean"


def ranking(table: pd.DataFrame) -> dict[str, Any]:
    """Where LipschitzLR (lr = 1/L, any variant) stands: its best variant's rank,
    the paper's own setting's rank, and the best baseline."""
    n = len(table)
    acc = acc_col(table)
    by_rank = table.sort_values(["rank", "policy"])
    lip = by_rank[by_rank.family == "lipschitz"]
    base = by_rank[by_rank.family == "baseline"]
    out: dict[str, Any] = {"n": n, "metric": acc}
    if len(lip):
        best = lip.iloc[0]
        out["best_lipschitz"] = (best.policy, int(best["rank"]), float(best[acc]))
        beaten = int((base[acc] < best[acc]).sum()) if len(base) else 0
        out["baselines_beaten"] = (beaten, len(base))
    paper = table[table.policy == "lipschitz-paper-epoch-sgd"]
    if len(paper):
        out["paper"] = ("lipschitz-paper-epoch-sgd", int(paper["rank"].iloc[0]), float(paper[acc].iloc[0]))
    if len(base):
        out["best_baseline"] = (base.iloc[0].policy, int(base.iloc[0]["rank"]), float(base.iloc[0][acc]))
    out["best"] = (by_rank.iloc[0].policy, int(by_rank.iloc[0]["rank"]), float(by_rank.iloc[0][acc]))
    return out


def _pm(mean: float, std: float, empty: str = "–") -> str:
    if not np.isfinite(mean):
        return empty or "–"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if np.isfinite(std) else "")


def _g(x: float, fmt: str = ".3g") -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, fmt)


def table_text(table: pd.DataFrame) -> str:
    """The table as Markdown, sorted by rank (the form the CLI prints and the summary embeds)."""
    target = table.attrs.get("target_acc")
    head = ["rank", "policy", "final test acc", "best test acc", "final val acc", "best val acc",
            f"epochs to {target:g}" if target else "epochs to target", "s to target", "reached",
            "lr min", "lr max", "diverged", "runs", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.sort_values(["rank", "policy"]).iterrows():
        cells = [str(r["rank"]), f"`{r.policy}`",
                 _pm(r.final_test_acc_mean, r.final_test_acc_std, r.why), _pm(r.best_test_acc_mean, r.best_test_acc_std),
                 _pm(r.final_val_acc_mean, r.final_val_acc_std), _pm(r.best_val_acc_mean, r.best_val_acc_std),
                 _g(r.epochs_to_target_mean, ".2g"), _g(r.time_to_target_mean, ".3g"), r.target_reached or "–",
                 _g(r.lr_min), _g(r.lr_max), str(r.diverged), str(r.runs), r.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def verdict(table: pd.DataFrame) -> str:
    """The plain sentence: where LipschitzLR stands among the baselines."""
    r = ranking(table)
    metric = "final test accuracy" if r["metric"] == "final_test_acc_mean" else "final validation accuracy"
    if "best_lipschitz" not in r:
        return "No LipschitzLR variant (lr = 1/L) ran in this study."
    name, rank, acc = r["best_lipschitz"]
    if not np.isfinite(acc):
        return "No LipschitzLR variant has an accuracy yet (every one diverged, failed or is still running)."
    beaten, nbase = r["baselines_beaten"]
    parts = [f"By mean {metric}, the best LipschitzLR variant (`{name}`, {acc:.4f}) ranks "
             f"{_ordinal(rank)} of {r['n']} policies and beats {beaten} of {nbase} baselines"]
    if "best_baseline" in r:
        bname, brank, bacc = r["best_baseline"]
        parts[0] += f"; the best baseline is `{bname}` ({bacc:.4f}, {_ordinal(brank)})"
    parts[0] += "."
    if "paper" in r and r["paper"][0] != name:
        row = table.set_index("policy").loc[r["paper"][0]]
        where = (f"ranks {_ordinal(r['paper'][1])} ({r['paper'][2]:.4f})" if np.isfinite(r["paper"][2])
                 else "has no accuracy")
        dead = f"; it diverged in {row.diverged} of {row.runs} runs" if row.diverged else ""
        parts.append(f"The paper's own setting (`{r['paper'][0]}`: paper bound, per epoch, SGD) {where}{dead}.")
    scaled = table[table.family == "lipschitz-scaled"]
    if len(scaled) and "paper" in r and table[acc_col(table)].loc[scaled.index].notna().any():
        best_s = scaled.sort_values("rank").iloc[0]
        if best_s["rank"] < r["paper"][1]:
            parts.append(f"Scaling 1/L helps: `{best_s.policy}` ranks {_ordinal(int(best_s['rank']))}, "
                         "so 1/L is not the best constant multiple here.")
        else:
            parts.append("No multiple of 1/L tried (×0.1–×10) beats 1/L itself.")
    return " ".join(parts)


def summary_markdown(table: pd.DataFrame, spec: StudySpec | None = None, *, title: str | None = None,
                     wall_time: float | None = None, command: str | None = None) -> str:
    """A Markdown report: the setting, the verdict sentence and the table."""
    name = spec.name if spec else "study"
    lines = [f"## {title or 'What-if study: ' + name}", ""]
    if spec is not None:
        base = ", ".join(f"{k}={v!r}" for k, v in spec.base.items())
        lines += [f"Base config: {base}; seeds {list(spec.seeds)}; {len(spec.policies)} policies.", ""]
    if command:
        lines += ["Command: `" + command + "`", ""]
    if wall_time is not None:
        lines += [f"Wall time: {wall_time / 60:.1f} min.", ""]
    if len(table):
        lines += [verdict(table), "", table_text(table), ""]
        dead = table[(table.diverged > 0) | (table.failed > 0)]
        if len(dead):
            lines += ["Diverged or failed: " + ", ".join(
                f"`{r.policy}` ({r.diverged} diverged, {r.failed} failed)" for _, r in dead.iterrows()) + ".", ""]
        bad = table[table.verdict != "healthy"]
        if len(bad):
            said = ", ".join(f"`{r.policy}` ({r.verdict})" for _, r in bad.iterrows())
            lines += [f"Not healthy: {said}.", ""]
    else:
        lines += ["No runs of this study are in the store yet.", ""]
    return "\n".join(lines)
