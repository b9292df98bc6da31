"""Why a row of a study's table has no accuracy: its runs that recorded no epoch, and what the
store says of each (``seed 0 failed: ValueError: ...``, ``seed 1 stopped: ...``, ``running``).

A failed run stays failed, with its error, until a launch is asked to train it again
(``retry_failed``); the table is where a user reads that error without opening the store.
"""
from __future__ import annotations

import pandas as pd

__all__ = ["why_empty", "LIMIT"]

#: characters of one run's reason in a table cell
LIMIT = 160


def why_empty(rows: pd.DataFrame, runs: list) -> str:
    """``rows``: one policy's per-run rows (run_id, final accuracies); ``runs``: its StudyRuns."""
    empty = set(rows.run_id[rows.final_test_acc.isna() & rows.final_val_acc.isna()])
    texts = []
    for run in runs:
        if run.run_id not in empty:
            continue
        reason = " ".join(str(run.reason or "").split()).replace("|", "/")
        if len(reason) > LIMIT:
            reason = reason[:LIMIT - 3] + "..."
        texts.append(f"seed {run.seed} {run.status}" + (f": {reason}" if reason else ""))
    return "; ".join(texts)
