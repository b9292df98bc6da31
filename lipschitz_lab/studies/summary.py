"""A study's table as Markdown: the ranking, the verdict sentence, the table and the summary report.

Everything here reads the table :func:`~lipschitz_lab.studies.results.study_table` made from the
store.  A study that measured curvature (``sharpness_every``) has the instruments' columns
(:mod:`lipschitz_lab.studies.instruments`): the median edge lr·λ_max, the share of measured steps
above the edge limit, λ_max at the first and the last measurement; the text table shows them then,
and only then.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lipschitz_lab.studies.spec import StudySpec

__all__ = ["acc_col", "ranking", "table_text", "verdict", "summary_markdown", "INSTRUMENT_COLUMNS",
           "has_instruments", "instrument_cells"]

#: the instruments' columns of a study that measured curvature, and their headers
INSTRUMENT_COLUMNS = {"edge_median": "median edge lr·λ_max", "edge_above": "steps above the edge",
                      "lambda_first": "λ_max first", "lambda_last": "λ_max last"}


def has_instruments(table: pd.DataFrame) -> bool:
    """Whether the study measured curvature: its table has the instruments' columns."""
    return "edge_median" in table.columns


def instrument_cells(row) -> list[str]:
    """A table row's instruments as text, in :data:`INSTRUMENT_COLUMNS`' order: ``1.4``, ``38 %``,
    ``12.5``, ``3.1`` (``–``: this policy measured nothing)."""
    share = row["edge_above"]
    return [_g(row["edge_median"]), "–" if not np.isfinite(share) else f"{100 * share:.0f} %",
            _g(row["lambda_first"]), _g(row["lambda_last"])]


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
    instruments = has_instruments(table)
    head += list(INSTRUMENT_COLUMNS.values()) if instruments else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.sort_values(["rank", "policy"]).iterrows():
        cells = [str(r["rank"]), f"`{r.policy}`",
                 _pm(r.final_test_acc_mean, r.final_test_acc_std, r.why), _pm(r.best_test_acc_mean, r.best_test_acc_std),
                 _pm(r.final_val_acc_mean, r.final_val_acc_std), _pm(r.best_val_acc_mean, r.best_val_acc_std),
                 _g(r.epochs_to_target_mean, ".2g"), _g(r.time_to_target_mean, ".3g"), r.target_reached or "–",
                 _g(r.lr_min), _g(r.lr_max), str(r.diverged), str(r.runs), r.verdict]
        cells += instrument_cells(r) if instruments else []
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
        if has_instruments(table):
            lines += ["Curvature (`sharpness_every`), over each run's measured steps, medians over seeds: the "
                      "median edge lr·λ_max, the share of steps above the run's edge limit (2; 2(1+μ) with "
                      "heavy-ball momentum: unstable along the top Hessian eigenvector), and λ_max at the "
                      "first and the last measurement.", ""]
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
