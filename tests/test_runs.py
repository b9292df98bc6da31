"""The run store: exact round trips, concurrent writers, a writer killed mid-run."""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import signal
import sqlite3
import threading
from contextlib import closing

import pandas as pd
import pytest

from lipschitz_lab.records import epoch_record, step_record
from lipschitz_lab.runs import DEFAULT_DB, SCHEMA_VERSION, STATUSES, RunStore, StoreWriter

#: pandas < 3 reads floats with a fast parser that may miss the last digit (seen on the H200
#: machine's pandas); pandas 3 round-trips by default and deprecates the argument
ROUND_TRIP = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}

# spawn: the children start clean (no inherited sqlite connection, no torch threads)
SPAWN = mp.get_context("spawn")


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs" / "test.db") as s:
        yield s


def sql(path, query: str, *params) -> list[tuple]:
    """Read the file directly, past the store."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(query, params).fetchall()


def same(a, b) -> bool:
    """Equal values of equal types (so 1 != 1.0 and True != 1), with NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def fake_run(n_epochs: int = 3, steps_per_epoch: int = 4) -> list[dict]:
    """The records a trainer would emit: step records, then one epoch record per epoch."""
    records, step = [], 0
    for epoch in range(n_epochs):
        for _ in range(steps_per_epoch):
            records.append(step_record(
                step=step, epoch=epoch, lr=1.0 / (step + 3), K_z=0.5 + step, L=step + 3.0,
                bound="paper", grad_last=0.1 * step, grad_layers={"conv1": 0.25 * step, "fc": 1e-300},
                clamped=None if step % 3 else "min_lr", loss=2.0 - 0.1 * step, acc=0.1 * step, time=0.01))
            step += 1
        records.append(epoch_record(epoch=epoch, step=step - 1, lr=1.0 / (step + 2),
                                    train_loss=1.5, train_acc=0.5, val_loss=float("nan"), time=0.2))
    return records


# -- round trips ------------------------------------------------------------------------
def test_records_round_trip_exactly(store):
    run_id = store.create_run({"lr": 0.1})
    odd = step_record(step=0, epoch=0, lr=1.0, K_z=float("inf"), L=float("-inf"), bound="strict",
                      grad_last=float("nan"), grad_layers={"a": {"deep": [1, 2.5, None]}, "b": float("nan")},
                      clamped="K_z=0", flag=True, count=3, tiny=5e-324, big=1.7976931348623157e308,
                      text="λ ünïcode")
    records = [odd, *fake_run()]
    store.append_records(run_id, records)
    back = store.records(run_id)
    assert len(back) == len(records)
    assert all(same(a, b) for a, b in zip(records, back)), (records, back)
    assert type(back[1]["lr"]) is float and type(back[1]["step"]) is int
    assert back[0]["clamped"] == "K_z=0" and back[1]["clamped"] == "min_lr" and back[2]["clamped"] is None


def test_records_keep_insertion_order_and_filter_by_kind(store):
    run_id = store.create_run({})
    records = fake_run()
    for i in range(0, len(records), 5):  # several appends
        store.append_records(run_id, records[i:i + 5])
    back = store.records(run_id)
    assert [(r["kind"], r["step"]) for r in back] == [(r["kind"], r["step"]) for r in records]
    steps = store.records(run_id, kind="step")
    epochs = store.records(run_id, kind="epoch")
    assert [r["step"] for r in steps] == list(range(12))
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert all(same(a, b) for a, b in zip(epochs, [r for r in records if r["kind"] == "epoch"]))
    assert store.records(run_id, kind="nothing") == []


def test_numpy_scalars_are_stored_as_numbers(store):
    np = pytest.importorskip("numpy")
    run_id = store.create_run({})
    store.append_records(run_id, [{"kind": "step", "step": np.int64(4), "epoch": 0, "lr": np.float32(0.5)}])
    (rec,) = store.records(run_id)
    assert rec["step"] == 4 and type(rec["step"]) is int and rec["lr"] == 0.5 and type(rec["lr"]) is float


def test_bad_records_are_refused_whole(store):
    run_id = store.create_run({})
    with pytest.raises(ValueError, match="kind"):
        store.append_records(run_id, [{"kind": "step", "step": 0}, {"step": 1}])
    with pytest.raises(ValueError, match="'step'.*'three'"):
        store.append_records(run_id, [{"kind": "step", "step": "three"}])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        store.append_records(run_id, [{"kind": "step", "step": 0, "x": object()}])
    assert store.records(run_id) == []


def test_config_is_sorted_json(store):
    config = {"zeta": 1, "alpha": {"b": [1, 2.0], "a": None}, "lam": 5e-4}
    run_id = store.create_run(config, name="baseline", study="s1")
    run = store.get_run(run_id)
    assert same(run["config"], {"alpha": {"a": None, "b": [1, 2.0]}, "lam": 5e-4, "zeta": 1})
    [(raw,)] = sql(store.path, "SELECT config FROM runs WHERE id = ?", run_id)
    assert raw == '{"alpha":{"a":null,"b":[1,2.0]},"lam":0.0005,"zeta":1}'
    assert (run["name"], run["study"], run["key"], run["status"], run["reason"]) == (
        "baseline", "s1", None, "running", None)
    assert run["created"] <= run["updated"]
    with pytest.raises(ValueError, match="config"):
        store.create_run({"f": lambda: 0})


# -- the run table ----------------------------------------------------------------------
def test_run_ids_are_short_and_unique(store):
    ids = [store.create_run({"i": i}) for i in range(50)]
    assert len(set(ids)) == 50
    assert all(len(i) == len("r-20261128-103001-ab12") and i.startswith("r-") for i in ids)


def test_status_is_validated(store):
    run_id = store.create_run({})
    store.set_status(run_id, "diverged", reason="L = inf at step 17")
    run = store.get_run(run_id)
    assert (run["status"], run["reason"]) == ("diverged", "L = inf at step 17")
    with pytest.raises(ValueError, match="status.*'done'"):
        store.set_status(run_id, "done")
    with pytest.raises(ValueError, match="status.*'bogus'"):
        store.list_runs(status="bogus")
    assert store.get_run(run_id)["status"] == "diverged"


def test_list_runs_filters(store):
    a = store.create_run({}, study="s1")
    b = store.create_run({}, study="s1")
    c = store.create_run({}, study="s2")
    d = store.create_run({})
    store.set_status(b, "finished")
    store.set_status(c, "finished")
    assert [r["id"] for r in store.list_runs()] == [a, b, c, d]
    assert [r["id"] for r in store.list_runs(study="s1")] == [a, b]
    assert [r["id"] for r in store.list_runs(status="finished")] == [b, c]
    assert [r["id"] for r in store.list_runs(study="s1", status="running")] == [a]
    assert store.list_runs(study="none") == []


def test_find_run_by_key(store):
    run_id = store.create_run({"lr": 1}, key="study=s1/policy=lipschitz/seed=0")
    assert store.find_run("study=s1/policy=lipschitz/seed=0")["id"] == run_id
    assert store.find_run("study=s1/policy=adam/seed=0") is None
    with pytest.raises(ValueError, match="key .* already names run"):
        store.create_run({}, key="study=s1/policy=lipschitz/seed=0")


def test_artifacts(store, tmp_path):
    run_id = store.create_run({})
    assert store.artifacts(run_id) == {}
    store.add_artifact(run_id, "checkpoint", tmp_path / "a.pt")
    store.add_artifact(run_id, "report", "report.html")
    store.add_artifact(run_id, "checkpoint", tmp_path / "b.pt")  # replaces
    assert store.artifacts(run_id) == {"report": "report.html", "checkpoint": str(tmp_path / "b.pt")}
    assert store.get_run(run_id)["artifacts"] == store.artifacts(run_id)


def test_delete_run_leaves_others(store):
    keep, drop = store.create_run({}), store.create_run({}, key="k")
    for run_id in (keep, drop):
        store.append_records(run_id, fake_run(1))
        store.add_artifact(run_id, "checkpoint", "c.pt")
    store.delete_run(drop)
    assert [r["id"] for r in store.list_runs()] == [keep]
    assert store.find_run("k") is None
    assert len(store.records(keep)) == 5
    assert sql(store.path, "SELECT COUNT(*) FROM records WHERE run_id = ?", drop) == [(0,)]


@pytest.mark.parametrize("call", [
    lambda s: s.get_run("r-x"), lambda s: s.set_status("r-x", "finished"),
    lambda s: s.append_records("r-x", [{"kind": "step", "step": 0}]), lambda s: s.records("r-x"),
    lambda s: s.add_artifact("r-x", "checkpoint", "c.pt"), lambda s: s.artifacts("r-x"),
    lambda s: s.truncate("r-x", after_step=0), lambda s: s.last_epoch("r-x"),
    lambda s: s.to_pandas("r-x"), lambda s: s.delete_run("r-x"),
])
def test_unknown_run_id(store, call):
    with pytest.raises(ValueError, match=r"unknown run id 'r-x'"):
        call(store)


# -- resuming ---------------------------------------------------------------------------
def test_truncate_then_resume_equals_uninterrupted(store):
    records = fake_run(n_epochs=3, steps_per_epoch=4)  # steps 0-11, epoch records after 3, 7, 11
    whole = store.create_run({})
    store.append_records(whole, records)

    resumed = store.create_run({})
    store.append_records(resumed, records[:13])  # epoch 0, epoch 1, and 3 steps of epoch 2
    assert store.last_epoch(resumed) == 1
    # the checkpoint was taken at the end of epoch 0 (step 3)
    assert store.truncate(resumed, after_epoch=0) == 13 - 5
    assert store.last_epoch(resumed) == 0
    assert [r["step"] for r in store.records(resumed)] == [0, 1, 2, 3, 3]
    store.append_records(resumed, records[5:])
    assert all(same(a, b) for a, b in zip(store.records(resumed), store.records(whole)))
    seqs = sql(store.path, "SELECT seq FROM records WHERE run_id = ? ORDER BY seq", resumed)
    assert [s for (s,) in seqs] == list(range(len(records)))


def test_truncate_by_step(store):
    run_id = store.create_run({})
    store.append_records(run_id, fake_run())
    assert store.truncate(run_id, after_step=5) == 15 - 7  # steps 0-5 and the epoch-0 record remain
    assert [(r["kind"], r["step"]) for r in store.records(run_id)] == [
        ("step", 0), ("step", 1), ("step", 2), ("step", 3), ("epoch", 3), ("step", 4), ("step", 5)]
    assert store.truncate(run_id, after_step=5) == 0
    with pytest.raises(ValueError, match="after_step or after_epoch"):
        store.truncate(run_id)


def test_last_epoch(store):
    run_id = store.create_run({})
    assert store.last_epoch(run_id) is None
    store.append_records(run_id, fake_run(n_epochs=1)[:-1])  # steps only
    assert store.last_epoch(run_id) is None
    store.append_records(run_id, fake_run(n_epochs=4))
    assert store.last_epoch(run_id) == 3


# -- pandas and CSV ---------------------------------------------------------------------
def expected_frame(records: list[dict]) -> pd.DataFrame:
    """An independent flattening: grad_layers spelled out by hand."""
    rows = []
    for r in records:
        row = {}
        for key, value in r.items():
            if key == "grad_layers":
                row["grad_layers.conv1"] = value["conv1"]
                row["grad_layers.fc"] = value["fc"]
            else:
                row[key] = value
        rows.append(row)
    return pd.DataFrame(rows)


def test_to_pandas(store):
    records = fake_run()
    run_id = store.create_run({})
    store.append_records(run_id, records)
    df = store.to_pandas(run_id)
    steps = [r for r in records if r["kind"] == "step"]
    assert len(df) == 12
    assert list(df.columns) == [
        "kind", "step", "epoch", "lr", "K_z", "L", "bound", "grad_last", "grad_layers.conv1",
        "grad_layers.fc", "clamped", "loss", "acc", "time"]
    pd.testing.assert_frame_equal(df, expected_frame(steps))
    assert df["lr"].tolist() == [r["lr"] for r in steps]
    assert df["grad_layers.conv1"].tolist() == [r["grad_layers"]["conv1"] for r in steps]
    epochs = store.to_pandas(run_id, kind="epoch")
    assert epochs["epoch"].tolist() == [0, 1, 2] and epochs["val_loss"].isna().all()
    assert len(store.to_pandas(run_id, kind=None)) == 15
    assert store.to_pandas(store.create_run({})).empty


def test_export_csv_reads_back_equal(store, tmp_path):
    records = fake_run()
    records[2]["K_z"] = float("inf")
    run_id = store.create_run({})
    store.append_records(run_id, records)
    path = store.export_csv(run_id, tmp_path / "out" / "steps.csv")
    back = pd.read_csv(path, **ROUND_TRIP)
    df = store.to_pandas(run_id)
    assert list(back.columns) == list(df.columns)
    for column in df.columns:
        if df[column].dtype == object:  # strings; None reads back as NaN
            assert back[column].where(back[column].notna(), None).tolist() == df[column].tolist(), column
        else:  # numbers: exactly, not approximately
            assert back[column].tolist() == df[column].tolist(), column
    assert back["K_z"][2] == math.inf
    epochs = pd.read_csv(store.export_csv(run_id, tmp_path / "epochs.csv", kind="epoch"), **ROUND_TRIP)
    assert epochs["train_loss"].tolist() == [1.5] * 3 and epochs["val_loss"].isna().all()


# -- StoreWriter ------------------------------------------------------------------------
def test_store_writer_flushes_in_batches_and_at_epochs(store):
    run_id = store.create_run({})
    records = fake_run(n_epochs=2, steps_per_epoch=5)  # 5 steps, epoch, 5 steps, epoch
    with StoreWriter(store, run_id, flush_every=3) as writer:
        for r in records[:3]:
            writer(r)
        assert len(store.records(run_id)) == 3  # flush_every reached
        for r in records[3:5]:
            writer(r)
        assert len(store.records(run_id)) == 3  # 2 still buffered
        writer(records[5])  # the epoch record flushes
        assert len(store.records(run_id)) == 6
        writer(records[6])
        assert len(store.records(run_id)) == 6
    assert len(store.records(run_id)) == 7  # close() flushed the rest
    with pytest.raises(ValueError, match="closed"):
        writer(records[7])
    writer.close()  # twice is fine
    assert all(same(a, b) for a, b in zip(store.records(run_id), records[:7]))


def test_store_writer_disabled_writes_nothing(store):
    run_id = store.create_run({})
    with StoreWriter(store, run_id, flush_every=1, enabled=False) as writer:
        for r in fake_run():
            writer(r)
    assert store.records(run_id) == []


def test_store_writer_validates_flush_every(store):
    run_id = store.create_run({})
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"flush_every.*" + repr(bad).replace(".", r"\.")):
            StoreWriter(store, run_id, flush_every=bad)


# -- the file ---------------------------------------------------------------------------
def test_schema_version_wal_and_reopen(tmp_path):
    path = tmp_path / "deep" / "folder" / "s.db"
    store = RunStore(str(path))
    run_id = store.create_run({"a": 1})
    store.close()
    assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert sql(path, "PRAGMA journal_mode") == [("wal",)]
    with RunStore(path) as again:
        assert again.get_run(run_id)["config"] == {"a": 1}  # reopening keeps the data
    sql(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ValueError, match="newer"):
        RunStore(path)


def test_defaults_and_pickling(tmp_path, monkeypatch):
    assert str(DEFAULT_DB) == os.path.join("runs", "lipschitz_lab.db")
    assert STATUSES == ("running", "finished", "stopped", "diverged", "failed")
    monkeypatch.chdir(tmp_path)
    store = RunStore()
    assert (tmp_path / "runs" / "lipschitz_lab.db").exists()
    run_id = store.create_run({})
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get_run(run_id)["id"] == run_id


# -- concurrency ------------------------------------------------------------------------
def _append_worker(path, run_id: str, worker: int, n: int, batch: int, barrier) -> None:
    store = RunStore(path)
    barrier.wait()  # both start writing at the same moment
    for start in range(0, n, batch):
        store.append_records(run_id, [{"kind": "step", "step": i, "epoch": 0, "worker": worker}
                                      for i in range(start, start + batch)])


def test_two_processes_write_at_once(store):
    run_id = store.create_run({})
    barrier = SPAWN.Barrier(2)
    procs = [SPAWN.Process(target=_append_worker, args=(store.path, run_id, w, 500, 5, barrier))
             for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    records = store.records(run_id)
    assert len(records) == 1000
    assert {(r["worker"], r["step"]) for r in records} == {(w, i) for w in range(2) for i in range(500)}
    for w in range(2):  # each writer's records stay in its own order
        assert [r["step"] for r in records if r["worker"] == w] == list(range(500))


def test_threads_share_one_store(store):
    run_id = store.create_run({})
    barrier = threading.Barrier(4)
    errors = []

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for start in range(0, 200, 4):
                store.append_records(run_id, [{"kind": "step", "step": i, "worker": worker}
                                              for i in range(start, start + 4)])
                store.records(run_id, kind="epoch")  # readers run alongside
        except Exception as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    records = store.records(run_id)
    assert sorted((r["worker"], r["step"]) for r in records) == [(w, i) for w in range(4) for i in range(200)]


def _forked_append(store: RunStore, run_id: str) -> None:
    inherited = store._local.handle.conn
    assert store._conn() is not inherited  # sqlite3 connections must not cross a fork
    store.append_records(run_id, [{"kind": "step", "step": 1, "epoch": 0}])


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_opens_its_own_connection(store):
    run_id = store.create_run({})
    store.append_records(run_id, [{"kind": "step", "step": 0, "epoch": 0}])  # the parent's connection is open
    child = mp.get_context("fork").Process(target=_forked_append, args=(store, run_id))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    store.append_records(run_id, [{"kind": "step", "step": 2, "epoch": 0}])  # and still works here
    assert [r["step"] for r in store.records(run_id)] == [0, 1, 2]


def _doomed_writer(path, run_id: str, committed) -> None:
    store = RunStore(path)
    for n in range(100_000):  # runs until killed; the bound only stops an orphan
        store.append_records(run_id, [{"kind": "step", "step": 3 * n + j, "epoch": 0} for j in range(3)])
        committed.put(n + 1)


def test_sigkill_keeps_every_committed_append(store):
    run_id = store.create_run({})
    committed = SPAWN.Queue()
    proc = SPAWN.Process(target=_doomed_writer, args=(store.path, run_id, committed))
    proc.start()
    seen = 0
    while seen < 40:
        seen = committed.get(timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL

    assert sql(store.path, "PRAGMA integrity_check") == [("ok",)]
    reopened = RunStore(store.path)
    steps = [r["step"] for r in reopened.records(run_id)]
    assert len(steps) >= 3 * seen  # every append the child saw commit
    assert len(steps) % 3 == 0  # and no half of one
    assert steps == list(range(len(steps)))
    reopened.append_records(run_id, [{"kind": "step", "step": len(steps), "epoch": 0}])
    reopened.set_status(run_id, "failed", reason="killed")
    assert len(reopened.records(run_id)) == len(steps) + 1


def test_a_version_1_store_is_migrated_and_keeps_everything(tmp_path):
    from lipschitz_lab.runs.leases import claim, events
    from lipschitz_lab.runs.schema import MIGRATIONS
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn, conn:           # a store as version 1 wrote it
        for statement in MIGRATIONS[1].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO runs VALUES ('r-1', 'n', 's', 's/p/seed=0/x', '{\"lr\": 0.1}', 'stopped', 'why',"
                     " '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')")
        conn.execute("INSERT INTO records VALUES ('r-1', 0, 'epoch', 3, 0, '{\"kind\": \"epoch\", \"epoch\": 0}')")
        conn.execute("PRAGMA user_version = 1")
    store = RunStore(path)
    assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] and SCHEMA_VERSION == 2
    run = store.get_run("r-1")
    assert (run["status"], run["reason"], run["config"]) == ("stopped", "why", {"lr": 0.1})
    assert store.records("r-1") == [{"kind": "epoch", "epoch": 0}]
    assert claim(store, "s/p/seed=0/x", "me", ttl=10).granted           # the new tables work
    store.set_status("r-1", "running")
    assert [(e["event"], e["detail"]) for e in events(store, run_id="r-1")] == [("claim", None), ("status", "running")]


def test_every_status_a_run_takes_is_an_event(store):
    from lipschitz_lab.runs.leases import events
    run_id = store.create_run({}, key="k")
    store.set_status(run_id, "stopped", "user")
    store.set_status(run_id, "running")
    store.set_status(run_id, "finished")
    store.delete_run(run_id)                                     # the history outlives the run
    assert [(e["event"], e["detail"], e["key"]) for e in events(store, run_id=run_id)] == [
        ("status", s, "k") for s in ("running", "stopped", "running", "finished")]


def test_create_run_keeps_a_proposed_id_unless_it_is_taken(store):
    first = store.create_run({}, run_id="r-20260101-000000-abcd")
    assert first == "r-20260101-000000-abcd"
    second = store.create_run({}, run_id=first)                  # taken: a fresh id instead
    assert second != first and second.startswith("r-") and len(store.list_runs()) == 2


def test_checkpoint_path_and_checkpoint_saved(store, tmp_path):
    from lipschitz_lab.runs.checkpoint import write_atomic
    run_id = store.create_run({})
    path = store.checkpoint_path(run_id)
    assert path == store.path.parent / "checkpoints" / f"{run_id}.pt"   # where the trainer always put it
    write_atomic(path, b"\x00bytes")
    store.checkpoint_saved(run_id, path, 3)
    assert path.read_bytes() == b"\x00bytes" and store.artifacts(run_id) == {"checkpoint": str(path)}
    assert [p.name for p in path.parent.iterdir()] == [path.name]        # no temp file left behind


def test_open_store_takes_paths_stores_and_store_like_objects(tmp_path, monkeypatch):
    from lipschitz_lab.runs import open_store

    class Proxy:                         # the writing surface of a store, e.g. a study worker's proxy
        def create_run(self, config, **kw): ...
        def append_records(self, run_id, records): ...
        def set_status(self, run_id, status, reason=None): ...

    store = RunStore(tmp_path / "a.db")
    assert open_store(store) is store
    assert open_store(tmp_path / "b.db").path == tmp_path / "b.db"
    monkeypatch.setenv("LIPSCHITZ_LAB_STORE", str(tmp_path / "c.db"))
    assert open_store(None).path == tmp_path / "c.db"
    proxy = Proxy()
    assert open_store(proxy) is proxy
    with pytest.raises(ValueError, match="store=42"):
        open_store(42)
