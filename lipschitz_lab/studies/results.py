"""A study's results, read back from the run store: tidy frames and one table (its Markdown:
:mod:`lipschitz_lab.studies.summary`).

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
from lipschitz_lab.runs.verdict import kinds_summary, verdict as run_verdict_of
from lipschitz_lab.studies.instruments import policy_instruments, run_instruments
from lipschitz_lab.studies.spec import PolicyEntry, StudySpec
# the Markdown rendering lives in studies/summary.py; its names stay importable from here
from lipschitz_lab.studies.summary import (INSTRUMENT_COLUMNS, acc_col, ranking, summary_markdown,  # noqa: F401
                                           table_text, verdict)
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


def _verdicts_and_instruments(store: RunStore, runs: list[StudyRun]) -> tuple[dict[str, str], pd.DataFrame]:
    """Each run's verdict kind (runs/verdict.py) and the policies' curvature instruments
    (studies/instruments.py; an empty frame when no run measured any), one read of each run's records."""
    kinds, measured = {}, []
    for r in runs:
        records = store.records(r.run_id)
        kinds[r.run_id] = run_verdict_of(records, r.status, r.reason).kind     # the kind needs no config
        got = run_instruments(records)
        if got is not None:
            measured.append({"policy": r.policy, **got})
    return kinds, policy_instruments(measured, [r.policy for r in runs])


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
    A study that measured curvature (``sharpness_every``) adds :data:`INSTRUMENT_COLUMNS`: the medians
    over seeds of ``edge_median`` (lr·λ_max), ``edge_above`` (the share of measured steps above the
    edge limit), ``lambda_first`` and ``lambda_last`` (NaN for a policy that measured nothing).
    Policies come in the study's order.
    """
    if target_acc is None and isinstance(study, StudySpec):
        target_acc = study.target_acc
    runs = study_runs(store, study)
    epochs, steps = epoch_frame(store, study, runs), step_frame(store, study, runs, fields=("lr",))
    kinds, instruments = _verdicts_and_instruments(store, runs)
    per_run = pd.DataFrame([{**_per_run(epochs, steps, r, target_acc), "verdict": kinds[r.run_id]} for r in runs])
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
    if len(table) and len(instruments):          # the study measured curvature: the instruments' columns
        table = table.merge(instruments[["policy", *INSTRUMENT_COLUMNS]], on="policy", how="left")
    if len(table):
        key = table["final_test_acc_mean"].where(table["final_test_acc_mean"].notna(), table["final_val_acc_mean"])
        table["rank"] = key.rank(ascending=False, method="min", na_option="bottom").astype(int)
    table.attrs["target_acc"] = target_acc
    return table
