"""Leases: each run of a study trains once, whoever launches it.

Claims are compare-and-set (one winner per key, even across processes), a stale lease is
taken over, a launcher that lost its lease can write nothing more; two launches of one
study at once train every run exactly once, and a launcher killed mid-run is taken over
after its lease timeout and its run finished from the checkpoint, no epoch lost or twice.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing

import pytest

from lipschitz_lab.runs import RunStore
from lipschitz_lab.runs.leases import Heartbeat, LeasedStore, LeaseLost, beat, claim, events, leases, release

SPAWN = mp.get_context("spawn")

# a launcher in its own OS process: python -c CHILD store barrier_dir name n_launchers policies epochs ttl
CHILD = """
import dataclasses, json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from lipschitz_lab.studies.runner import run_study
from lipschitz_lab.studies.spec import StudySpec, select
store, barrier, name, n, policies, epochs, ttl = sys.argv[1:8]
spec = StudySpec("two-launchers", {"dataset": "digits", "model": "mlp", "batch_size": 64, "device": "cpu",
                                   "epochs": int(epochs)}, select(policies.split(",")), [0])
spec.runs()                                  # the imports and checks happen before the barrier
(Path(barrier) / name).touch()
while len(list(Path(barrier).iterdir())) < int(n):
    time.sleep(0.01)
result = run_study(spec, store, lease_timeout_s=float(ttl))
print(json.dumps([dataclasses.asdict(o) for o in result.outcomes]))
"""


def launcher(python, store_path, barrier, name, n, policies, epochs, ttl):
    barrier.mkdir(exist_ok=True)
    return subprocess.Popen([python, "-c", CHILD, str(store_path), str(barrier), name, str(n), ",".join(policies),
                             str(epochs), str(ttl)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_transitions(store, run_id):
    return [e for e in events(store, run_id=run_id, event="status") if e["detail"] == "running"]


def assert_records_once(store, run_id, epochs):
    """Every epoch once, in order; steps 0..n-1 once each, in order."""
    assert [e["epoch"] for e in store.records(run_id, "epoch")] == list(range(epochs))
    steps = [s["step"] for s in store.records(run_id, "step")]
    assert steps == list(range(len(steps))) and len(steps) == store.records(run_id, "epoch")[-1]["step"]


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "s.db") as s:
        yield s


def edit_lease(store, sql, *params):
    """Change a lease in the file directly, past the API (a silent owner, a stolen lease)."""
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute(sql, params)


def age_lease(store, key, seconds):
    """Pretend the owner went silent ``seconds`` ago."""
    edit_lease(store, "UPDATE leases SET heartbeat = heartbeat - ? WHERE key = ?", seconds, key)


# -- the lease itself ----------------------------------------------------------------------
def test_claim_refuses_a_live_lease_and_takes_over_a_stale_one(store):
    first = claim(store, "s/p/seed=0/x", "A", ttl=30)
    assert first.granted and first.previous is None
    refused = claim(store, "s/p/seed=0/x", "B", ttl=30)
    assert not refused.granted and refused.previous.owner == "A" and refused.previous.live()
    assert claim(store, "s/p/seed=0/x", "A", ttl=30).granted          # the owner may claim again
    age_lease(store, "s/p/seed=0/x", 31)                               # A's own ttl (30 s) has passed
    taken = claim(store, "s/p/seed=0/x", "B", ttl=5)
    assert taken.granted and taken.previous.owner == "A" and taken.previous.age() > 30
    assert leases(store, "s/")["s/p/seed=0/x"].owner == "B"
    assert [e["event"] for e in events(store, key="s/p/seed=0/x")] == ["claim", "claim", "takeover"]
    assert "from A" in events(store, event="takeover")[0]["detail"]


def test_the_owner_states_the_timeout(store):
    claim(store, "k", "A", ttl=100)
    age_lease(store, "k", 50)                        # silent 50 s: stale for a 5 s ttl, not for A's 100 s
    assert not claim(store, "k", "B", ttl=5).granted


def test_beat_and_release_only_touch_the_owners_own(store):
    claim(store, "k1", "A", ttl=30)
    claim(store, "k2", "A", ttl=30)
    age_lease(store, "k2", 40)
    claim(store, "k2", "B", ttl=30)                  # B took k2 over
    before = leases(store)["k1"].heartbeat
    assert beat(store, "A", ["k1", "k2"]) == {"k2"}
    assert leases(store)["k1"].heartbeat > before and leases(store)["k2"].owner == "B"
    assert not release(store, "k2", "A") and leases(store)["k2"].owner == "B"
    assert release(store, "k1", "A") and "k1" not in leases(store)
    assert events(store, key="k2")[-1]["event"] == "lost" and events(store, key="k2")[-1]["owner"] == "A"


def test_bad_timeout_names_the_field(store):
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError, match="lease_timeout_s"):
            claim(store, "k", "A", ttl=bad)


def test_a_leased_store_writes_nothing_once_the_lease_is_lost(store):
    claim(store, "k", "A", ttl=30)
    mine = LeasedStore(store.path, "k", "A")
    run_id = mine.create_run({"lr": 0.1}, key="k")
    mine.append_records(run_id, [{"kind": "step", "step": 0, "epoch": 0}])
    age_lease(store, "k", 40)
    claim(store, "k", "B", ttl=30)
    for write in (lambda: mine.append_records(run_id, [{"kind": "step", "step": 1, "epoch": 0}]),
                  lambda: mine.set_status(run_id, "finished"), lambda: mine.truncate(run_id, after_epoch=-1),
                  mine.check):
        with pytest.raises(LeaseLost, match="held by B"):
            write()
    assert [r["step"] for r in store.records(run_id)] == [0] and store.get_run(run_id)["status"] == "running"


def test_heartbeat_keeps_a_lease_live_and_reports_a_lost_one(store):
    claim(store, "k1", "A", ttl=3)
    claim(store, "k2", "A", ttl=3)
    lost = []
    hb = Heartbeat(store.path, "A", 3, on_lost=lost.append)
    hb.add("k1")
    hb.add("k2")
    try:
        time.sleep(4.5)                              # 1.5 ttl: only the beats keep them live
        assert leases(store)["k1"].live() and not claim(store, "k1", "B", ttl=1).granted
        edit_lease(store, "UPDATE leases SET owner = 'B' WHERE key = 'k2'")
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        hb.stop()
    assert lost == ["k2"]


def _claimer(path, owner, keys, barrier, out):
    store = RunStore(path)
    barrier.wait()
    out.put((owner, [k for k in keys if claim(store, k, owner, ttl=60).granted]))


def test_claims_from_two_processes_have_one_winner_per_key(store):
    keys = [f"race/p{i}/seed=0/x" for i in range(150)]
    barrier, out = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [SPAWN.Process(target=_claimer, args=(store.path, owner, keys, barrier, out)) for owner in "AB"]
    for p in procs:
        p.start()
    won = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert sorted(won["A"] + won["B"]) == sorted(keys)          # every key once: no double grant, no gap
    assert {k: lease.owner for k, lease in leases(store, "race/").items()} == {
        **{k: "A" for k in won["A"]}, **{k: "B" for k in won["B"]}}


# -- two launchers, one store ------------------------------------------------------------------
def test_two_launches_at_once_train_every_run_exactly_once(tmp_path, python):
    policies = ["constant-0.1", "constant-0.3", "constant-0.03", "lipschitz-strict-epoch-sgd"]
    path = tmp_path / "s.db"
    procs = [launcher(python, path, tmp_path / "barrier", name, 2, policies, 3, 30) for name in "AB"]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    trained = {"new", "resumed", "restarted"}
    for oa, ob in zip(a, b):                                      # the same plan, in the same order
        assert oa["key"] == ob["key"]
        assert (oa["action"] in trained) != (ob["action"] in trained), (oa, ob)   # one of them trained it
        assert oa["status"] == ob["status"] == "finished"        # both waited for the other's runs
        other = ob if oa["action"] in trained else oa
        assert other["action"] in ("held", "skipped")
    assert any(o["action"] in trained for o in a) and any(o["action"] in trained for o in b)   # work was shared
    store = RunStore(path)
    runs = store.list_runs(study="two-launchers")
    assert len(runs) == len(policies)
    for run in runs:
        assert len(running_transitions(store, run["id"])) == 1, events(store, run_id=run["id"])
        assert_records_once(store, run["id"], 3)
    assert leases(store) == {}                                   # every lease given back


def test_a_killed_launcher_is_taken_over_after_its_lease_timeout(tmp_path, python):
    from lipschitz_lab.studies.runner import run_study
    from lipschitz_lab.studies.spec import StudySpec, select
    path, epochs = tmp_path / "s.db", 60
    victim = launcher(python, path, tmp_path / "barrier", "A", 1, ["constant-0.1"], epochs, 2)
    store = RunStore(path)
    deadline = time.monotonic() + 300
    run = None
    while run is None or not store.records(run["id"], "epoch")[2:]:   # 3 epochs recorded, and checkpointed
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[1][-2000:]
        time.sleep(0.05)
        runs = store.list_runs(study="two-launchers")
        run = runs[0] if runs else None
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    at_kill = store.last_epoch(run["id"])
    assert store.get_run(run["id"])["status"] == "running" and at_kill < epochs - 1
    assert leases(store)[run["key"]].owner.split(":")[1] == str(victim.pid)

    spec = StudySpec("two-launchers", {"dataset": "digits", "model": "mlp", "batch_size": 64, "device": "cpu",
                                       "epochs": epochs}, select("constant-0.1"), [0])
    (outcome,) = run_study(spec, store, lease_timeout_s=2).outcomes
    assert outcome.action == "resumed" and outcome.status == "finished", outcome
    assert outcome.run_id == run["id"] and "took over from" in outcome.note
    (takeover,) = events(store, run_id=run["id"], event="takeover")
    silent = float(takeover["detail"].split("silent for ")[1].rstrip("s"))
    assert silent > 2                                            # not before the victim's 2 s timeout
    assert len(running_transitions(store, run["id"])) == 2      # the victim's start and the takeover
    assert_records_once(store, run["id"], epochs)
