"""Leases: each run of a study trains once, whoever launches it.

Claims are compare-and-set (one winner per key, even across processes), a stale lease is
taken over, a launcher that lost its lease can write nothing more (records, status, checkpoint);
two launches of one study at once train every run exactly once; a launcher killed mid-run is
taken over after its lease timeout and its run finished from the checkpoint, no epoch lost or
twice; and one that stalled past its timeout writes nothing after the takeover.

The launchers other than the test's own are forks of this process (no interpreter or torch
start-up), with one torch thread, as the test's own launcher has.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import time
from contextlib import closing

import pytest
import torch

from lipschitz_lab.runs import RunStore
from lipschitz_lab.runs.leases import Heartbeat, LeasedStore, LeaseLost, beat, claim, events, leases, release
from lipschitz_lab.studies.runner import run_study
from lipschitz_lab.studies.spec import StudySpec, select
from train_helpers import signal_after_steps

FORK = mp.get_context("fork")


def small_study(name, policies, epochs):
    """4 steps an epoch on 128 digits: a run takes a fraction of a second."""
    return StudySpec(name, {"dataset": "digits", "model": "mlp", "batch_size": 32, "train_subset": 128,
                            "device": "cpu", "epochs": epochs}, select(policies), [0])


@pytest.fixture(autouse=True, scope="module")
def one_thread(tmp_path_factory):
    """One torch thread, and the lab's lazy imports and data loaded once here, not in every fork."""
    from lipschitz_lab.trainer import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train({**small_study("warm", ["constant-0.1"], 1).base, "max_steps": 1},
          store=tmp_path_factory.mktemp("warm") / "s.db", progress=False)
    yield
    torch.set_num_threads(threads)


def fork_launcher(spec, path, ttl: float, *, after: int | None = None, sig: int = signal.SIGKILL):
    """``run_study(spec, path)`` in a fork of this process; ``(pid, pipe)``: its outcomes come as
    JSON through the pipe.  ``after``: the child sends itself ``sig`` once ``after`` steps are done."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the child: never returns into pytest
        try:
            os.close(read)
            signal_after_steps(after, sig)
            result = run_study(spec, path, lease_timeout_s=ttl)
            os.write(write, json.dumps([dataclasses.asdict(o) for o in result.outcomes]).encode())
        finally:
            os._exit(0)
    os.close(write)
    return pid, read


def outcomes_of(pid: int, pipe: int) -> list[dict] | None:
    """What a forked launcher sent (None: it died first), once it has exited."""
    with os.fdopen(pipe) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else None


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
    """Every write is fenced in its own transaction: records, status, truncation, the checkpoint
    (moved into place inside the transaction that checks the lease), locally and on the Ray
    driver's side (a Receiver applies a worker's messages through a LeasedStore)."""
    from lipschitz_lab.runs.checkpoint import load_checkpoint, stage_checkpoint
    from lipschitz_lab.studies.remote_store import Receiver
    claim(store, "k", "A", ttl=30)
    mine, driver = LeasedStore(store.path, "k", "A"), Receiver(store.path, "k", "A")
    run_id = mine.create_run({"lr": 0.1}, key="k")
    mine.append_records(run_id, [{"kind": "step", "step": 0, "epoch": 0}])
    path = store.checkpoint_path(run_id)
    assert mine.publish_checkpoint(run_id, stage_checkpoint(path, {"epoch": 0}), 0) == path
    driver.apply(("checkpoint", (run_id, path.read_bytes(), 0), {}))
    age_lease(store, "k", 40)
    claim(store, "k", "B", ttl=30)
    theirs = LeasedStore(store.path, "k", "B")
    theirs.publish_checkpoint(run_id, stage_checkpoint(path, {"epoch": 5}), 5)
    ours = path.read_bytes()
    for write in (lambda: mine.append_records(run_id, [{"kind": "step", "step": 1, "epoch": 0}]),
                  lambda: mine.set_status(run_id, "finished"), lambda: mine.truncate(run_id, after_epoch=-1),
                  lambda: mine.publish_checkpoint(run_id, stage_checkpoint(path, {"epoch": 1}), 1),
                  lambda: driver.apply(("checkpoint", (run_id, b"a late checkpoint", 1), {})),
                  lambda: driver.apply(("set_status", (run_id, "failed", "late"), {})), mine.check):
        with pytest.raises(LeaseLost, match="held by B"):
            write()
    assert [r["step"] for r in store.records(run_id)] == [0] and store.get_run(run_id)["status"] == "running"
    assert load_checkpoint(path) == {"epoch": 5} and path.read_bytes() == ours
    assert [p.name for p in path.parent.iterdir()] == [path.name]        # no staged file left behind


def test_heartbeat_keeps_a_lease_live_and_reports_a_lost_one(store):
    claim(store, "k1", "A", ttl=1)
    claim(store, "k2", "A", ttl=1)
    lost = []
    hb = Heartbeat(store.path, "A", 1, on_lost=lost.append)
    hb.add("k1")
    hb.add("k2")
    try:
        time.sleep(1.5)                              # 1.5 ttl: only the beats keep them live
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
    barrier, out = FORK.Barrier(2), FORK.Queue()
    procs = [FORK.Process(target=_claimer, args=(store.path, owner, keys, barrier, out)) for owner in "AB"]
    for p in procs:
        p.start()
    won = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert sorted(won["A"] + won["B"]) == sorted(keys)          # every key once: no double grant, no gap
    assert {k: lease.owner for k, lease in leases(store, "race/").items()} == {
        **{k: "A" for k in won["A"]}, **{k: "B" for k in won["B"]}}


# -- two launchers, one store ------------------------------------------------------------------
def test_two_launches_at_once_train_every_run_exactly_once(tmp_path):
    spec = small_study("two-launchers", ["constant-0.1", "constant-0.3", "constant-0.03",
                                         "lipschitz-strict-epoch-sgd"], 3)
    path = tmp_path / "s.db"
    launchers = [fork_launcher(spec, path, 30) for _ in "AB"]     # both start at once
    a, b = (outcomes_of(*launcher) for launcher in launchers)
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
    assert len(runs) == 4
    for run in runs:
        assert len(running_transitions(store, run["id"])) == 1, events(store, run_id=run["id"])
        assert_records_once(store, run["id"], 3)
    assert leases(store) == {}                                   # every lease given back


def test_a_killed_launcher_is_taken_over_after_its_lease_timeout(tmp_path):
    spec, path = small_study("killed", ["constant-0.1"], 4), tmp_path / "s.db"
    pid, pipe = fork_launcher(spec, path, 1.0, after=6)          # SIGKILL in epoch 1: epoch 0 checkpointed
    assert outcomes_of(pid, pipe) is None
    store = RunStore(path)
    (run,) = store.list_runs()
    assert store.get_run(run["id"])["status"] == "running" and store.last_epoch(run["id"]) == 0
    assert leases(store)[run["key"]].owner.split(":")[1] == str(pid)
    (outcome,) = run_study(spec, store, lease_timeout_s=1.0).outcomes
    assert outcome.action == "resumed" and outcome.status == "finished", outcome
    assert outcome.run_id == run["id"] and "took over from" in outcome.note
    (takeover,) = events(store, run_id=run["id"], event="takeover")
    silent = float(takeover["detail"].split("silent for ")[1].rstrip("s"))
    assert silent > 1                                            # not before the victim's 1 s timeout
    assert len(running_transitions(store, run["id"])) == 2      # the victim's start and the takeover
    assert_records_once(store, run["id"], 4)


def test_a_stalled_holder_writes_nothing_after_the_takeover(tmp_path):
    """Issue 22, item 5.  Launcher A trains a run and freezes itself (SIGSTOP: its heartbeat too)
    at the start of epoch 2, past its 1 s lease timeout; launcher B takes the run over and finishes
    it from A's checkpoint.  Then A goes on (SIGCONT): its next write is refused, its launch says
    so, and the store holds B's run as B left it, equal to an uninterrupted run."""
    from lipschitz_lab.trainer import train
    spec, path = small_study("stall", ["constant-0.1"], 4), tmp_path / "s.db"
    pid, pipe = fork_launcher(spec, path, 1.0, after=9, sig=signal.SIGSTOP)   # epochs 0 and 1 checkpointed
    try:
        assert os.WIFSTOPPED(os.waitpid(pid, os.WUNTRACED)[1])
        store = RunStore(path)
        (run,) = store.list_runs()
        assert store.last_epoch(run["id"]) == 1 and leases(store)[run["key"]].owner.split(":")[1] == str(pid)
        (b,) = run_study(spec, store, lease_timeout_s=1.0).outcomes          # waits, then takes over
        assert (b.action, b.status, b.run_id) == ("resumed", "finished", run["id"]) and "took over" in b.note
        records, checkpoint = store.records(run["id"]), store.checkpoint_path(run["id"]).read_bytes()
        takeover = events(store, event="takeover")[0]["id"]
    finally:
        os.kill(pid, signal.SIGCONT)
    (a,) = outcomes_of(pid, pipe)
    assert a["status"] == "finished" and "another launcher took the run over" in a["note"], a
    assert "LeaseLost" in a["note"]                             # it tried to write, and was refused
    assert store.records(run["id"]) == records and store.checkpoint_path(run["id"]).read_bytes() == checkpoint
    assert store.get_run(run["id"])["status"] == "finished"
    owner_a = events(store, event="claim")[0]["owner"]
    assert {e["event"] for e in events(store) if e["id"] > takeover and e["owner"] == owner_a} <= {"lost"}
    whole = RunStore(tmp_path / "whole.db")
    (plan,) = spec.runs()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(records) == strip(whole.records(train(plan.config, store=whole, progress=False).run_id))
