"""Kill one run of every policy in the study catalogue mid-run (a real SIGKILL), resume it,
and compare with an uninterrupted run of the same config: the records must be equal (issue
10, item 4): LipschitzLR's variants, the scaled rates, the torch schedulers, the LR range
tests and every parameter-free optimizer."""
from __future__ import annotations

import multiprocessing
import signal

import pytest

from lipschitz_lab.runs import RunStore
from lipschitz_lab.studies.spec import catalogue
from lipschitz_lab.trainer import train

BASE = dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=256, epochs=3, seed=5, max_lr=1.0)
STEPS_PER_EPOCH = 6            # 1294 digits / 256
POLICIES = list(catalogue())   # all of them (45)


def _config(name: str) -> dict:
    return {**BASE, **catalogue()[name].overrides, "name": name}


def _strip(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


@pytest.fixture(scope="module")
def fork():
    """Processes forked from a server that has torch and the lab imported: each starts in
    milliseconds instead of importing torch again."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "lipschitz_lab.trainer", "train_helpers"])
    return ctx


@pytest.mark.slow
@pytest.mark.parametrize("name", POLICIES)
def test_a_killed_run_resumes_to_the_records_of_an_uninterrupted_run(fork, tmp_path, name):
    from train_helpers import kill_mid_run
    whole = train(_config(name), store=tmp_path / "whole.db", progress=False)
    b = _strip(RunStore(tmp_path / "whole.db").records(whole.run_id))
    # mid-epoch 1, after epoch 0's checkpoint; a run that diverges before it: mid-epoch 0 (no
    # checkpoint yet: the resume starts it again from scratch)
    at = (1, 2) if any(r["kind"] == "step" and r["step"] == STEPS_PER_EPOCH + 2 for r in b) else (0, 2)
    proc = fork.Process(target=kill_mid_run, args=(str(tmp_path / "killed.db"), _config(name), *at,
                                                   STEPS_PER_EPOCH))
    proc.start()
    proc.join(600)
    assert proc.exitcode == -signal.SIGKILL
    store = RunStore(tmp_path / "killed.db")
    (info,) = store.list_runs()
    assert info["status"] == "running" and store.last_epoch(info["id"]) == (at[0] - 1 if at[0] else None)
    resumed = train(_config(name), store=store, resume=info["id"], progress=False)
    assert (resumed.status, resumed.reason, resumed.steps) == (whole.status, whole.reason, whole.steps)
    a = _strip(store.records(info["id"]))
    assert [r["kind"] for r in a] == [r["kind"] for r in b]
    assert a == b
