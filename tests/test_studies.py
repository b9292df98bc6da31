"""What-if studies: every policy trains, re-runs skip, divergence and failures are recorded,
the table equals the store's records, the CLI and the study panel work."""
import io
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lipschitz_lab import policies as policies_mod
from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.runs import RunStore
from lipschitz_lab.runs.leases import claim, events, leases
from lipschitz_lab.policies.baselines import BASELINES, RANGE_ITERS, suggest_lr
from lipschitz_lab.studies.results import study_table, summary_markdown, table_text, verdict
from lipschitz_lab.studies.progress import progress
from lipschitz_lab.studies.runner import run_study
from lipschitz_lab.studies.spec import PolicyEntry, StudySpec, catalogue, load_study, select

# digits + the small MLP: ~23 steps an epoch, a fraction of a second per run
BASE = {"dataset": "digits", "model": "mlp", "batch_size": 64, "device": "cpu"}
CATALOGUE = catalogue()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on busy shared cores OpenMP's
    spinning threads make a 0.5 s test take 10 s; spawned workers set their own."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name, policies, seeds=(0,), **base):
    return StudySpec(name, {**BASE, "epochs": 1, "max_steps": 4, **base}, policies, list(seeds))


class CountingTrain:
    """Wraps trainer.train and counts the calls (the runner looks it up at call time)."""

    def __init__(self, monkeypatch):
        import lipschitz_lab.trainer as trainer
        self.calls, self._train = [], trainer.train
        monkeypatch.setattr(trainer, "train", self)

    def __call__(self, config, **kw):
        self.calls.append((config["name"], kw.get("resume")))
        return self._train(config, **kw)


# -- the policies ------------------------------------------------------------------------
def test_catalogue_covers_every_registered_policy():
    used = {e.lr_policy for e in CATALOGUE.values()}
    assert set(policies_mod.POLICIES) <= used, set(policies_mod.POLICIES) - used
    assert set(BASELINES) <= set(policies_mod.POLICIES)
    names = set(CATALOGUE)
    for bound in ("paper", "corrected", "strict"):
        for rec in ("epoch", "step"):
            for opt in ("sgd", "momentum", "adam"):
                assert f"lipschitz-{bound}-{rec}-{opt}" in names
    assert {f"lipschitz-paper-epoch-sgd-x{c}" for c in ("0.1", "0.3", "3", "10")} <= names
    assert {e.overrides["lr"] for e in select("constant")} == {0.003, 0.01, 0.03, 0.1, 0.3, 1.0}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_policy_runs_and_records_steps(name, tmp_path):
    from lipschitz_lab.trainer import train
    entry = CATALOGUE[name]
    store = RunStore(tmp_path / "s.db")
    run = train({**BASE, "epochs": 1, "max_steps": 4, **entry.overrides, "name": name}, store=store,
                progress=False)
    steps = store.records(run.run_id, "step")
    assert store.get_run(run.run_id)["status"] == run.status
    lrs = np.array([s["lr"] for s in steps], float)
    assert len(steps) >= 1 and np.isfinite(lrs).all() and (lrs > 0).all()
    if run.status == "diverged":            # only the what-if multiples x3, x10 may blow up this fast
        assert entry.overrides.get("lr_scale", 1) > 1, run.reason
        return
    assert run.status == "finished", run.reason
    assert len(steps) == 4
    epoch = store.records(run.run_id, "epoch")[0]
    assert 0 <= epoch["val_acc"] <= 1
    if entry.lr_policy == "constant":
        assert np.allclose(lrs, entry.overrides["lr"])
    if entry.lr_policy.startswith("lr_range_test"):   # the range test's iterations count in the cost
        assert 20 <= epoch["extra_steps"] <= RANGE_ITERS  # fewer when the sweep's loss diverges
        assert np.allclose(lrs, lrs[0]) and 1e-5 < lrs[0] < 10
    if entry.lr_policy in ("prodigy", "dadapt_sgd"):  # lr * d, d starting at d0 = 1e-6
        assert lrs[0] == pytest.approx(1e-6)
    if entry.lr_policy == "dog":                      # eta_0 = r_eps / ||g_0||: far below c = 1
        assert lrs[0] < 1e-2


def test_suggest_lr_against_hand_computed_curves():
    lrs = list(np.logspace(-5, 1, 61))
    # a loss that falls fastest at index 30 (a tanh step centred there) and is smallest at 45
    idx = np.arange(61)
    loss = 2 - np.tanh((idx - 30) / 3.0) + np.where(idx > 45, (idx - 45) * 0.5, 0)
    assert suggest_lr(lrs, list(loss), "steepest") == pytest.approx(lrs[30])
    assert suggest_lr(lrs, list(loss), "min10") == pytest.approx(lrs[45] / 10)
    with pytest.raises(ValueError, match="rule"):
        suggest_lr(lrs, list(loss), "median")
    with pytest.raises(ValueError, match="finite"):
        suggest_lr([1e-3, 1e-2, 1e-1], [1.0, math.nan, math.inf])


# -- the spec ----------------------------------------------------------------------------
def test_run_keys_are_stable_and_follow_the_config():
    spec = tiny("k", select(["constant-0.1", "prodigy"]), seeds=(0, 1))
    keys = [p.key for p in spec.runs()]
    assert keys == [p.key for p in tiny("k", select(["constant-0.1", "prodigy"]), seeds=(0, 1)).runs()]
    assert len(set(keys)) == 4 and keys[0].startswith("k/constant-0.1/seed=0/")
    other = [p.key for p in tiny("k", select(["constant-0.1", "prodigy"]), seeds=(0, 1), epochs=2).runs()]
    assert not set(keys) & set(other)


@pytest.mark.parametrize("make,field", [
    (lambda: PolicyEntry("p", {"lrr": 0.1}), "lrr"),
    (lambda: PolicyEntry("p", {"seed": 3}), "seed"),
    (lambda: tiny("s", select("constant-0.1"), seeds=()), "seeds"),
    (lambda: select("no-such-policy"), "no-such-policy"),
    (lambda: tiny("s", [PolicyEntry("p", {"lr_policy": "nope"})]).runs(), "nope"),
    (lambda: tiny("s", select("constant-0.1"), epochs=0).runs(), "epochs"),
])
def test_bad_specs_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


# -- running: skip, resume, diverge, fail --------------------------------------------------
def test_rerun_skips_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
    spec = tiny("rerun", select(["constant-0.1", "lipschitz-strict-epoch-sgd"]), seeds=(0, 1))
    store = RunStore(tmp_path / "s.db")
    first = run_study(spec, store)
    assert [o.action for o in first.outcomes] == ["new"] * 4
    assert all(o.status == "finished" for o in first.outcomes)
    ids = sorted(r["id"] for r in store.list_runs(study="rerun"))

    counter = CountingTrain(monkeypatch)
    second = run_study(spec, store)
    assert counter.calls == []
    assert [o.action for o in second.outcomes] == ["skipped"] * 4
    assert sorted(r["id"] for r in store.list_runs(study="rerun")) == ids


def test_a_stopped_run_resumes_only_from_its_checkpoint(tmp_path, monkeypatch):
    """A checkpoint that cannot be read fails the resume, and the run stays failed with the
    error: it is not trained again from scratch (issue 22, item 2); no checkpoint at all (stopped
    in its first epoch) restarts it in place."""
    spec = tiny("resume", select(["constant-0.1", "constant-0.3", "constant-0.03"]), epochs=2, max_steps=None,
                train_subset=128)
    store = RunStore(tmp_path / "s.db")
    a, b, c = run_study(spec, store).outcomes
    for o in (a, b, c):
        store.set_status(o.run_id, "stopped", "pretend the user stopped it")
    store.checkpoint_path(b.run_id).write_bytes(b"not a checkpoint")
    store.checkpoint_path(c.run_id).unlink()

    counter = CountingTrain(monkeypatch)
    second = run_study(spec, store)
    assert counter.calls == [(o.policy, o.run_id) for o in (a, b, c)]      # one call each: no second try
    assert [o.action for o in second.outcomes] == ["resumed", "resumed", "restarted"]
    assert [o.status for o in second.outcomes] == ["finished", "failed", "finished"]
    assert "UnpicklingError" in second.outcomes[1].reason and "no checkpoint" in second.outcomes[2].note
    assert [o.run_id for o in second.outcomes] == [a.run_id, b.run_id, c.run_id]
    for o in second.outcomes:                  # one record per epoch: resumed, or failed and left alone
        assert [e["epoch"] for e in store.records(o.run_id, "epoch")] == [0, 1]
    assert store.get_run(b.run_id)["status"] == "failed"


def stop_after_an_epoch(store, stop: threading.Event):
    """An on_start callback: set ``stop`` once the first run has stored an epoch (so a checkpoint
    is written before the next batch), however slow the machine is today."""
    started = []

    def watch():
        watcher, deadline = RunStore(store.path), time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(watcher.records(r["id"], "epoch") for r in watcher.list_runs()):
                stop.set()
                return
            time.sleep(0.02)

    def on_start(plan):
        started.append(plan.policy)
        if len(started) == 1:
            threading.Thread(target=watch, daemon=True).start()
    on_start.started = started
    return on_start


def test_stop_ends_the_run_in_flight_starts_no_more_and_a_rerun_resumes(tmp_path):
    spec = tiny("stop", select(["constant-0.1", "constant-0.3", "constant-0.03"]), epochs=40, max_steps=None,
                train_subset=128)
    store = RunStore(tmp_path / "s.db")
    stop = threading.Event()
    on_start = stop_after_an_epoch(store, stop)
    result = run_study(spec, store, stop_event=stop, on_start=on_start)
    assert len(on_start.started) == 1                           # nothing started after the stop
    by = {o.policy: o for o in result.outcomes}
    first = by.pop(on_start.started[0])
    assert first.action == "new" and first.status == "stopped" and "stopped by the user" in first.reason
    steps = store.records(first.run_id, "step")
    epochs = store.records(first.run_id, "epoch")
    assert 0 < len(steps) < 40 * 2 and len(epochs) < 40         # it really stopped mid-run, records kept
    assert store.get_run(first.run_id)["status"] == "stopped"
    for o in by.values():
        assert o.action == "not started" and o.status is None and store.find_run(o.key) is None

    again = run_study(spec, store)                              # Launch again: resume, then the rest
    by2 = {o.policy: o for o in again.outcomes}
    assert by2[first.policy].action == "resumed" and by2[first.policy].run_id == first.run_id
    assert {o.action for p, o in by2.items() if p != first.policy} == {"new"}
    assert all(o.status == "finished" for o in again.outcomes)
    assert [e["epoch"] for e in store.records(first.run_id, "epoch")] == list(range(40))


def test_diverging_policy_is_recorded_and_the_study_goes_on(tmp_path):
    boom = PolicyEntry("constant-1e6", {"lr_policy": "constant", "lr": 1e6})
    spec = tiny("diverge", [boom, *select("constant-0.1")], max_steps=10)
    result = run_study(spec, RunStore(tmp_path / "s.db"))
    by = {o.policy: o for o in result.outcomes}
    assert by["constant-1e6"].status == "diverged" and by["constant-1e6"].reason
    assert by["constant-0.1"].status == "finished"
    table = result.table()
    assert table.set_index("policy").loc["constant-1e6", "diverged"] == 1


@pytest.fixture
def exploding_policy():
    """A policy that builds (so the study validates) and raises at its first step."""
    import torch

    from lipschitz_lab.policies.base import Policy

    class Exploding(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("the policy exploded on purpose")

    @policies_mod.register_policy("test_exploding")
    def build(config, model, ctx):
        return Policy(Exploding(model.parameters(), lr=0.1))
    yield PolicyEntry("exploding", {"lr_policy": "test_exploding"})
    policies_mod.POLICIES.pop("test_exploding", None)


def test_a_failed_run_stays_failed_with_its_error_until_retried(tmp_path, monkeypatch, exploding_policy):
    """Issue 22, item 2: a second launch does not train a failed run again (nor would a second
    launcher: the check is made under the run's lease); the table says why its row is empty;
    ``retry_failed=True`` trains it again."""
    spec = tiny("fail", [exploding_policy, *select("constant-0.1")])
    store = RunStore(tmp_path / "s.db")
    bad, good = run_study(spec, store).outcomes
    assert bad.status == "failed" and bad.reason == "RuntimeError: the policy exploded on purpose"
    assert store.find_run(bad.key)["status"] == "failed" and good.status == "finished"
    counter = CountingTrain(monkeypatch)
    again = run_study(spec, store)
    assert counter.calls == [] and [o.action for o in again.outcomes] == ["skipped", "skipped"]
    assert (again.outcomes[0].status, again.outcomes[0].reason) == ("failed", bad.reason)
    row = study_table(store, spec).set_index("policy").loc["exploding"]
    assert row.why == "seed 0 failed: RuntimeError: the policy exploded on purpose" and row.failed == 1
    text = table_text(study_table(store, spec))
    assert "| `exploding` | seed 0 failed: RuntimeError: the policy exploded" in text
    retried = run_study(spec, store, retry_failed=True)
    assert counter.calls == [("exploding", bad.run_id)]           # the failed one only, in place
    assert [o.action for o in retried.outcomes] == ["restarted", "skipped"]
    assert retried.outcomes[0].status == "failed" and retried.outcomes[0].run_id == bad.run_id


def worker_pids(store, key=None):
    """The pid of each worker that took ``key`` (any run), in order (the workers log where they train)."""
    return [int(re.search(r"pid=(\d+)", e["detail"]).group(1))
            for e in events(store, key=key, event="worker")]


def test_dead_workers_are_replaced_their_runs_resumed_and_failures_recorded(tmp_path, monkeypatch,
                                                                             exploding_policy):
    """Issue 22, item 4.  One launch, two worker processes: ``victim``'s worker is SIGKILLed after
    its first checkpoint and the run resumes on a fresh worker, to the records of ``twin`` (the
    same config, never interrupted, trained beside it); every worker ``doomed`` gets is killed, so
    it is failed after max_attempts; a run that raises in its worker is failed with the error; and
    the study's stop reaches ``endless`` in its worker once the others are settled."""
    from lipschitz_lab.studies.local import PoolBackend
    monkeypatch.setattr(PoolBackend, "max_attempts", 2)
    same = {"lr_policy": "lipschitz", "bound": "strict", "recompute": "epoch", "optimizer": "momentum"}
    spec = tiny("pool", [PolicyEntry("victim", same), PolicyEntry("twin", same), exploding_policy,
                         PolicyEntry("doomed", {"lr_policy": "constant", "lr": 0.1, "epochs": 100000}),
                         PolicyEntry("endless", {"lr_policy": "constant", "lr": 0.1, "epochs": 100000})],
                epochs=40, max_steps=None, train_subset=64)
    victim, twin, exploding, doomed, endless = spec.runs()
    store, killed, done, stop = RunStore(tmp_path / "s.db"), [], threading.Event(), threading.Event()

    def killer():                      # victim: once, mid-run; doomed: every worker it gets; then stop
        watcher = RunStore(store.path)
        while not done.wait(0.02):
            run = watcher.find_run(victim.key)
            if not any(k == "victim" for k, _ in killed) and run and watcher.artifacts(run["id"]):
                killed.append(("victim", worker_pids(watcher, victim.key)[0]))
                os.kill(killed[-1][1], signal.SIGKILL)
            for pid in worker_pids(watcher, doomed.key):
                if ("doomed", pid) not in killed:
                    killed.append(("doomed", pid))
                    os.kill(pid, signal.SIGKILL)
            runs = [watcher.find_run(p.key) for p in (victim, twin, exploding, doomed, endless)]
            settled = all(r and r["status"] != "running" for r in runs[:4])
            if settled and runs[4] and watcher.records(runs[4]["id"]):
                stop.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        by = {o.policy: o for o in run_study(spec, store, workers=2, stop_event=stop).outcomes}
    finally:
        done.set()
        thread.join(10)
    o = by["endless"]                  # stopped in its worker: resumable, its records kept
    assert (o.status, store.get_run(o.run_id)["status"]) == ("stopped", "stopped")
    assert "stopped by the user" in o.reason
    assert 0 < len(store.records(o.run_id, "step")) < 1000
    o = by["victim"]
    assert (o.status, o.action, o.attempts) == ("finished", "resumed", 2), o
    assert "attempt 2 after the worker process died (killed by SIGKILL)" in o.note
    assert len(store.records(o.run_id, "epoch")) == 40 and killed[0][0] == "victim"
    pids = worker_pids(store, victim.key)
    assert len(pids) == 2 and pids[0] == killed[0][1] != pids[1]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(store.records(o.run_id)) == strip(store.records(by["twin"].run_id))
    assert (by["twin"].status, by["twin"].attempts) == ("finished", 1)
    o = by["doomed"]
    assert (o.status, o.attempts) == ("failed", 2) and len(worker_pids(store, doomed.key)) == 2
    assert o.reason == "WorkerDied: the worker process died (killed by SIGKILL) on attempt 2 of 2"
    # a spawned worker has no "test_exploding" policy: its build raises there, and the run is failed
    assert by["exploding"].status == "failed" and "test_exploding" in by["exploding"].reason
    assert [e["event"] for e in events(store, event="retry")] == ["retry", "retry"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    """Running, or able to run: not gone, not a zombie waiting to be reaped."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the processes in /proc")
def test_workers_die_with_their_launcher(tmp_path, python):
    """Issue 22, item 3: SIGKILL a ``--workers 2`` launcher mid-run; 15 s later no process it
    started is alive (found by pid before the kill), and no run trains on."""
    cfg, db = tmp_path / "long.toml", tmp_path / "s.db"
    cfg.write_text(textwrap.dedent("""
        [study]
        name = "orphans"
        policies = ["constant-0.1", "constant-0.3"]
        [train]
        dataset = "digits"
        epochs = 100000
        train_subset = 64
        device = "cpu"
    """))
    with open(tmp_path / "err.txt", "w") as err:
        launcher = subprocess.Popen([python, "-m", "lipschitz_lab", "study", "--config", str(cfg), "--store",
                                     str(db), "--workers", "2"], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while not (db.exists() and len(events(RunStore(db), event="worker")) == 2):
            assert launcher.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()
            time.sleep(0.1)
        started = descendants(launcher.pid)
        workers = worker_pids(RunStore(db))
        assert set(workers) <= set(started) and all(alive(p) for p in workers)
    finally:
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(30)
    deadline = time.monotonic() + 15
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in started if alive(p)] == []
    store = RunStore(db)
    counts = [len(store.records(r["id"])) for r in store.list_runs()]
    time.sleep(1.0)
    assert [len(store.records(r["id"])) for r in store.list_runs()] == counts     # nobody writes on


# -- results ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("study") / "s.db")
    spec = StudySpec("table", {**BASE, "epochs": 2}, select(["constant-0.3", "lipschitz-strict-epoch-sgd",
                                                              "lipschitz-paper-epoch-sgd-x0.1"]),
                     [0, 1], target_acc=0.5)
    run_study(spec, store)
    return spec, store


def test_table_numbers_equal_the_store_records(finished_study):
    spec, store = finished_study
    table = study_table(store, spec).set_index("policy")
    for policy in ("constant-0.3", "lipschitz-strict-epoch-sgd"):
        ids = [store.find_run(p.key)["id"] for p in spec.runs() if p.policy == policy]
        final_test = [store.records(i, "epoch")[-1]["test_acc"] for i in ids]
        best_val = [max(e["val_acc"] for e in store.records(i, "epoch")) for i in ids]
        lrs = [s["lr"] for i in ids for s in store.records(i, "step")]
        assert table.loc[policy, "final_test_acc_mean"] == pytest.approx(np.mean(final_test))
        assert table.loc[policy, "final_test_acc_std"] == pytest.approx(np.std(final_test, ddof=1))
        assert table.loc[policy, "best_val_acc_mean"] == pytest.approx(np.mean(best_val))
        assert table.loc[policy, "lr_min"] == pytest.approx(min(lrs))
        assert table.loc[policy, "lr_max"] == pytest.approx(max(lrs))
        assert set(table.loc[policy, "run_ids"].split(", ")) == set(ids)
        # epochs to target: the first epoch (1-based) whose val accuracy reaches 0.5
        hits = []
        for i in ids:
            accs = [e["val_acc"] for e in store.records(i, "epoch")]
            hits.append(next((k + 1 for k, a in enumerate(accs) if a >= 0.5), math.nan))
        assert np.nanmean(hits) == pytest.approx(table.loc[policy, "epochs_to_target_mean"], nan_ok=True)
    # rank 1 is the best mean final test accuracy
    assert table["final_test_acc_mean"].idxmax() == table["rank"].idxmin()


def test_summary_says_where_lipschitz_stands(finished_study):
    spec, store = finished_study
    table = study_table(store, spec)
    text = summary_markdown(table, spec)
    rank = int(table.set_index("policy").loc["lipschitz-strict-epoch-sgd", "rank"])
    ordinal = {1: "1st", 2: "2nd", 3: "3rd"}[rank]
    assert "best LipschitzLR variant (`lipschitz-strict-epoch-sgd`" in text
    assert f"ranks {ordinal} of 3 policies" in text and verdict(table) in text
    assert text.count("| `") == 3
    assert "edge_median" not in table and "λ_max" not in text         # no sharpness_every: no instruments


def test_study_plots_fill_from_the_store(finished_study, tmp_path):
    from lipschitz_lab.ui.study_plots import save_study_html, study_figures
    spec, store = finished_study
    figs = study_figures(store, spec)
    counts = figs.row_counts()
    assert counts["acc"] == 3 * 2 and counts["bars"] == 3
    n_steps = len(store.records(store.find_run(spec.runs()[0].key)["id"], "step"))
    assert len(figs.lr_sources["constant-0.3"].data["lr"]) == n_steps
    path = save_study_html(store, spec, tmp_path / "plots.html")
    assert "Bokeh" in path.read_text()[:20000]


# -- the CLI and the panel ------------------------------------------------------------------
def test_cli_unknown_preset_is_one_line_exit_2(cli):
    code, out, err = cli("study", "--preset", "nope")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "preset='nope'" in err


def test_cli_bad_workers_is_one_line_exit_2(cli):
    code, _, err = cli("study", "--preset", "digits-quick", "--workers", "0", "--no-run")
    assert code == 2 and err.count("\n") == 1 and "--workers" in err


def test_cli_tiny_study_from_toml(cli, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(textwrap.dedent("""
        [study]
        name = "tiny-cli"
        seeds = [0]
        policies = ["constant-0.1", {name = "my-const", lr_policy = "constant", lr = 0.05}]
        [train]
        dataset = "digits"
        epochs = 1
        max_steps = 3
        device = "cpu"
    """))
    code, out, err = cli("study", "--config", cfg, "--store", tmp_path / "s.db", "--out", tmp_path / "out")
    assert code == 0, err
    assert "`constant-0.1`" in out and "`my-const`" in out
    assert re.search(r"^\[1/2\] constant-0\.1 +seed 0  new +finished", err, re.M)     # not a tty: plain lines
    assert re.search(r"^\[2/2\] my-const +seed 0  new +finished", err, re.M)
    assert (tmp_path / "out" / "summary.md").read_text().startswith("## What-if study: tiny-cli")
    assert (tmp_path / "out" / "plots.html").exists()
    assert len(RunStore(tmp_path / "s.db").list_runs(study="tiny-cli")) == 2
    spec = load_study(cfg)
    assert [p.name for p in spec.policies] == ["constant-0.1", "my-const"]


BAD_STUDY = """
[study]
name = "bad"
seeds = [0]
policies = [{name = "ok", lr_policy = "constant", lr = 0.1},
            {name = "bad", lr_policy = "lipschitz", bound = "paper", loss = "label_smoothed_ce"}]
[train]
dataset = "digits"
epochs = 1
device = "cpu"
"""


def test_a_study_with_a_bad_policy_exits_2_and_stores_nothing(cli, tmp_path, monkeypatch):
    """Issue 22, item 1: every policy is built before anything trains; one line names the policy
    and its field, and the store holds no run (the CLI, run_study and validate_study alike)."""
    import random

    from lipschitz_lab.studies.spec import validate_study
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD_STUDY)
    counter = CountingTrain(monkeypatch)
    code, out, err = cli("study", "--config", cfg, "--store", tmp_path / "cli.db")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert ("policy 'bad': bound='paper': the paper gives no bound for loss='label_smoothed_ce'; "
            "use bound='corrected' or 'strict'") in err
    with pytest.raises(ConfigError, match="^policy 'bad': bound='paper': "):
        run_study(load_study(cfg), tmp_path / "api.db")
    assert counter.calls == []
    assert [RunStore(tmp_path / name).list_runs() for name in ("cli.db", "api.db")] == [[], []]
    random.seed(7)
    expected = random.random()
    random.seed(7)
    spec = load_study(cfg).replace(policies=select(["constant-0.1", "lipschitz-smooth-step-sgd"]))
    assert [p.key for p in validate_study(spec)] == [p.key for p in spec.runs()]
    assert random.random() == expected                      # building them left the caller's RNG alone
    with pytest.raises(ConfigError, match="^policy 'p': epochs=0: "):
        validate_study(tiny("s", [PolicyEntry("p", {"epochs": 0})]))
    with pytest.raises(ConfigError, match="^policy 'p': model='resnet20': "):
        validate_study(tiny("s", [PolicyEntry("p", {"model": "resnet20"})]))


def test_study_panel_headless(tmp_path):
    from lipschitz_lab.ui.panel_study import StudyPanel
    panel = StudyPanel(tmp_path / "s.db", name="panel", **BASE, epochs=1, max_steps=5)
    panel.select(["constant-0.1", "lipschitz-strict-epoch-sgd"])
    assert panel.selector.value == ("lipschitz-strict-epoch-sgd", "constant-0.1")
    panel.launch()
    assert panel.wait(timeout=120)
    panel.flush()
    counts = panel.figures.row_counts()
    assert counts["lr"] == 2 * 5 and counts["acc"] == 2 and counts["bars"] == 2
    assert "finished" in panel.status.value and not panel.running
    assert len(panel.figures.acc_sources["constant-0.1"].data["val_acc"]) == 1


def test_a_study_that_measures_curvature_has_the_instruments_in_its_tables(tmp_path):
    import statistics
    from lipschitz_lab.ui.panel_study import StudyPanel
    panel = StudyPanel(tmp_path / "s.db", name="sharp", **BASE, epochs=1, max_steps=6)
    panel.select(["constant-0.1", "lipschitz-strict-step-momentum"])
    panel.sharpness.value = "2"                           # the panel's field: steps 0, 2, 4 measured
    panel.launch()
    assert panel.wait(timeout=120)
    panel.flush()
    table = panel.table.set_index("policy")
    for policy, limit in (("constant-0.1", 2.0), ("lipschitz-strict-step-momentum", 3.8)):
        (plan,) = [p for p in panel.spec.runs() if p.policy == policy]
        steps = panel.store.records(panel.store.find_run(plan.key)["id"], "step")
        measured = [r for r in steps if r["lambda_max"] is not None]
        assert [r["step"] for r in measured] == [0, 2, 4] and {r["edge_limit"] for r in steps} == {limit}
        edges = [r["lr"] * r["lambda_max"] for r in measured]           # edge = lr·λ_max, recomputed
        assert table.loc[policy, "edge_median"] == pytest.approx(statistics.median(edges), rel=1e-9)
        assert table.loc[policy, "edge_above"] == pytest.approx(sum(e > limit for e in edges) / 3)
        assert table.loc[policy, "lambda_first"] == measured[0]["lambda_max"]
        assert table.loc[policy, "lambda_last"] == measured[-1]["lambda_max"]
    text = table_text(panel.table)
    assert "| median edge lr·λ_max | steps above the edge | λ_max first | λ_max last |" in text
    assert "Curvature (`sharpness_every`)" in summary_markdown(panel.table, panel.spec)
    results = panel.outcomes.value
    assert "median edge lr·λ_max" in results and f"{table.loc['constant-0.1', 'lambda_first']:.3g}" in results


def test_study_panel_reports_a_bad_seed_without_a_thread(tmp_path):
    from lipschitz_lab.ui.panel_study import StudyPanel
    panel = StudyPanel(tmp_path / "s.db", **BASE)
    panel.seeds.value = "zero"
    panel.launch()
    assert not panel.running and "seeds" in panel.error and panel._threads == []



def test_study_panel_stop_says_stopped_and_keeps_the_runs(tmp_path):
    from lipschitz_lab.ui.panel_study import StudyPanel
    panel = StudyPanel(tmp_path / "s.db", name="panel-stop", **BASE, epochs=400, poll=0.1)
    panel.select(["constant-0.1", "constant-0.3"])
    panel.launch()
    deadline = time.monotonic() + 120
    while not any(panel._steps.values()):                        # the first run's steps reach the panel
        assert time.monotonic() < deadline, "no steps arrived"
        time.sleep(0.1)
        panel.flush()
    panel.stop_button.click()
    assert "stopping" in panel.status.value and panel.stop_button.disabled
    assert panel.wait(timeout=120)
    panel.flush()
    assert not panel.running and not panel.launch_button.disabled
    text = re.sub(r"<[^>]+>", "", panel.status.value)
    assert text.startswith("stopped") and "1 runs stopped, 1 not started" in text, text
    (run,) = RunStore(tmp_path / "s.db").list_runs(study="panel-stop")
    assert run["status"] == "stopped"

# -- backends, leases, progress --------------------------------------------------------------
def test_importing_the_studies_does_not_import_ray(python):
    code = ("import sys, lipschitz_lab.studies as s, lipschitz_lab.studies.runner, lipschitz_lab.cli.study\n"
            "s.run_study, s.progress, s.StudyProgress\n"
            "assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_missing_ray_is_one_line_naming_the_extra(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)                    # `import ray` fails as if not installed
    monkeypatch.delitem(sys.modules, "lipschitz_lab.studies.ray_backend", raising=False)
    code, out, err = cli("study", "--preset", "digits-quick", "--policies", "constant-0.1", "--seeds", "0",
                         "--backend", "ray", "--store", tmp_path / "s.db")
    assert code == 2 and out == "" and err.count("\n") == 1 and "pip install 'lipschitz-lab[ray]'" in err
    with pytest.raises(ImportError, match=r"lipschitz-lab\[ray\]"):
        run_study(tiny("no-ray", select("constant-0.1")), tmp_path / "s.db", backend="ray")
    assert RunStore(tmp_path / "s.db").list_runs() == [] and leases(RunStore(tmp_path / "s.db")) == {}


@pytest.mark.parametrize("kwargs,field", [
    ({"backend": "spark"}, "backend='spark'"),
    ({"address": "auto"}, "address='auto'"),
    ({"workers": 0}, "workers=0"),
    ({"lease_timeout_s": 0}, "lease_timeout_s=0"),
    ({"cpus_per_run": 0}, "cpus_per_run=0"),
])
def test_bad_run_study_arguments_name_the_field(kwargs, field, tmp_path):
    with pytest.raises(ValueError, match=re.escape(field)):
        run_study(tiny("bad", select("constant-0.1")), tmp_path / "s.db", **kwargs)
    assert RunStore(tmp_path / "s.db").list_runs() == []


def test_cli_address_without_ray_is_one_line_exit_2(cli):
    code, _, err = cli("study", "--preset", "digits-quick", "--address", "auto", "--no-run")
    assert code == 2 and err.count("\n") == 1 and "--address='auto'" in err


def test_progress_counts_done_running_stale_and_pending(tmp_path):
    spec = tiny("prog", select(["constant-0.1", "constant-0.3", "constant-0.03", "constant-0.01"]), epochs=2,
                max_steps=None)
    store = RunStore(tmp_path / "s.db")
    empty = progress(store, spec)
    assert (empty.total, empty.done, empty.pending, empty.eta_s) == (4, 0, 4, None)
    run_study(spec.replace(policies=spec.policies[:2]), store)     # the same keys: two runs finished
    a, b, c, d = spec.runs()
    store.create_run(c.config, name=c.policy, study=spec.name, key=c.key)   # "running", nobody holds it
    claim(store, d.key, "someone:1:ab", ttl=60)                             # claimed, not created yet
    p = progress(str(store.path), spec)
    assert (p.total, p.done, p.running, p.stale, p.pending) == (4, 2, 1, 1, 1)
    assert p.by_status == {"finished": 2, "running": 1, "pending": 1} and p.owners == {"someone:1:ab": 1}
    assert (p.epochs_done, p.epochs_total) == (4, 8) and p.fraction == 0.5 and not p.finished
    # ETA: two runs left, each as long as the finished ones took (their last epoch's time), one at a time
    took = [store.records(store.find_run(x.key)["id"], "epoch")[-1]["time"] for x in (a, b)]
    assert p.eta_s == pytest.approx(2 * np.mean(took) / 1)
    assert p.line().startswith("2/4 runs done, 1 running, 1 stale, ETA ")


def test_progress_bar_on_a_terminal(tmp_path):
    from lipschitz_lab.cli.study import StudyBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    spec = tiny("bar", select(["constant-0.1", "constant-0.3"]))
    store, tty = RunStore(tmp_path / "s.db"), Terminal()
    with StudyBar(store, spec, 2, stream=tty) as bar:
        run_study(spec, store, on_outcome=bar.outcome)
    text = tty.getvalue()
    assert "2/2" in text and "ETA " in text                        # after the first run: one left, timed
    assert re.search(r"constant-0\.1 +seed 0  new +finished", text) and "constant-0.3" in text


def test_remote_store_sends_every_write_and_the_driver_writes_them(tmp_path):
    """A worker's proxy and the driver's receiver, wired by a list instead of Ray."""
    from lipschitz_lab.studies.remote_store import Receiver, RemoteStore
    from lipschitz_lab.trainer import train
    (plan,) = tiny("proxy", select("lipschitz-strict-epoch-sgd"), epochs=3, max_steps=None).runs()
    direct = RunStore(tmp_path / "direct.db")
    expected = train(plan.config, store=direct, run_key=plan.key, progress=False)
    sent = []
    proxy = RemoteStore(tmp_path / "worker", sent.append)
    run = train(plan.config, store=proxy, run_key=plan.key, progress=False)
    assert run.status == "finished" and not proxy.path.exists()            # no store on the worker
    ops = [op for op, _, _ in sent]
    assert ops[0] == "create_run" and ops[-1] == "set_status" and ops.count("checkpoint") == 3
    assert ops.index("checkpoint") > ops.index("append_records")           # an epoch's records go first
    driver = RunStore(tmp_path / "driver.db")
    claim(driver, plan.key, "me", ttl=60)
    receiver = Receiver(driver.path, plan.key, "me")
    for message in sent:
        receiver.apply(message)
    run_id = receiver.run_id(run.run_id)
    assert driver.get_run(run_id)["status"] == "finished"
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(driver.records(run_id)) == strip(direct.records(expected.run_id))
    assert driver.checkpoint_path(run_id).read_bytes() == proxy.checkpoint_path(run.run_id).read_bytes()
    assert driver.artifacts(run_id)["checkpoint"] == str(driver.checkpoint_path(run_id))


def test_remote_store_ships_the_checkpoints_it_is_told_of_and_not_a_seeded_one(tmp_path):
    from lipschitz_lab.studies.remote_store import RemoteStore
    sent = []
    proxy = RemoteStore(tmp_path, sent.append, run={"id": "r-1", "key": "k", "status": "stopped"})
    proxy.seed_checkpoint("r-1", b"from the driver")
    proxy.set_status("r-1", "running")
    assert [op for op, _, _ in sent] == ["set_status"]                       # the seed is the driver's own
    path = proxy.checkpoint_path("r-1")
    path.write_bytes(b"epoch 3")
    proxy.checkpoint_saved("r-1", path, 3)                                   # the trainer's call
    proxy.append_records("r-1", [{"kind": "epoch", "epoch": 4}])
    assert [(op, args[1:]) for op, args, _ in sent if op == "checkpoint"] == [("checkpoint", (b"epoch 3", 3))]
    assert proxy.get_run("r-1")["status"] == "running" and proxy.find_run("other") is None
    with pytest.raises(ValueError, match="status"):
        proxy.set_status("r-1", "done")
    with pytest.raises(ValueError, match="unknown run id 'r-2'"):
        proxy.get_run("r-2")


def test_the_range_test_leaves_no_gradient_behind():
    """Its last iteration's .grad would be added to the first training step's gradient (the
    kill-and-resume test found it: a resumed run's first step differed from an uninterrupted one's)."""
    import torch
    from torch import nn

    from lipschitz_lab.losses import make_criterion
    from lipschitz_lab.policies.baselines import range_test
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,))), batch_size=16)
    history = range_test(model, torch.optim.SGD(model.parameters(), lr=1e-5), make_criterion("softmax_ce"),
                         loader, "cpu", 20)
    assert len(history["lr"]) == 20
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_new_config_field_with_its_default_keeps_every_runs_key():
    """Run keys hash the fields that differ from TrainConfig's defaults: adding a field (at a
    default that keeps today's behaviour) must not make a study train its finished runs again."""
    from lipschitz_lab.studies.spec import config_hash
    cfg = TrainConfig(dataset="digits", epochs=2, bound="strict").to_dict()
    assert config_hash(cfg) == config_hash({k: v for k, v in cfg.items() if k != "flush_every"})
    assert config_hash(cfg) != config_hash({**cfg, "flush_every": 8})
    assert config_hash(cfg) != config_hash({**cfg, "epochs": 3})
