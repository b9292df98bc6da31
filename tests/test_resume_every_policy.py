"""Kill one run of every policy in the study catalogue mid-run (SIGKILL), resume it, and
compare with an uninterrupted run of the same config: the records must be equal (issue 10,
item 4): LipschitzLR's variants, the scaled rates, the torch schedulers, the LR range tests
and every parameter-free optimizer."""
from __future__ import annotations

import multiprocessing
import signal

import pytest

from lipschitz_lab.runs import RunStore
from lipschitz_lab.studies.spec import catalogue
from lipschitz_lab.trainer import train

BASE = dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=256, epochs=3, seed=5)
POLICIES = list(catalogue())          # all 37

STEPS_PER_EPOCH = 6            # 1294 digits / 256

def _config(name: str) -> dict:
    return {**BASE, **catalogue()[name].overrides, "name": name}


def _strip(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Every policy's run, SIGKILLed mid-epoch 1 (after epoch 0's checkpoint) in its own process.

    The processes fork from a server that has torch and the lab imported, so each starts in
    milliseconds instead of re-importing torch 37 times."""
    from train_helpers import kill_mid_run
    root = tmp_path_factory.mktemp("killed")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "lipschitz_lab.trainer", "train_helpers"])
    out = {}
    for name in POLICIES:
        db = root / f"{name}.db"
        proc = ctx.Process(target=kill_mid_run, args=(str(db), _config(name), 1, 2, STEPS_PER_EPOCH))
        proc.start()
        proc.join(300)
        out[name] = (db, proc.exitcode)
    return out


@pytest.mark.slow
@pytest.mark.timeout(2400)                # the fixture trains 37 runs before the first test
@pytest.mark.parametrize("name", POLICIES)
def test_a_killed_run_resumes_to_the_records_of_an_uninterrupted_run(killed, tmp_path, name):
    db, exitcode = killed[name]
    assert exitcode == -signal.SIGKILL
    store = RunStore(db)
    (info,) = store.list_runs()
    assert info["status"] == "running" and store.last_epoch(info["id"]) == 0
    resumed = train(_config(name), store=store, resume=info["id"], progress=False)
    whole = train(_config(name), store=tmp_path / "whole.db", progress=False)
    assert resumed.status == whole.status
    a = _strip(store.records(info["id"]))
    b = _strip(RunStore(tmp_path / "whole.db").records(whole.run_id))
    assert [r["kind"] for r in a] == [r["kind"] for r in b]
    assert a == b
