"""The trainer: records, store, divergence, stop, resume after SIGKILL, bad configs, DDP."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from lipschitz_lab.config import PRESETS, ConfigError, TrainConfig, preset
from lipschitz_lab.runs import RunStore
from lipschitz_lab.trainer import select_device, train

QUICK = dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=128, epochs=2, bound="strict",
             recompute="epoch")


def _strip(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_train_records_reach_store_and_subscribers(tmp_path):
    seen = []
    run = train(QUICK, store=tmp_path / "s.db", subscribers=[seen.append], progress=False)
    assert run.status == "finished" and len(run.epochs) == 2
    store = RunStore(tmp_path / "s.db")
    stored = store.records(run.run_id)
    assert _strip(stored) == _strip([r for r in seen if r["kind"] != "status"])
    steps = [r for r in stored if r["kind"] == "step"]
    assert len(steps) == run.steps == 2 * 11          # 1294 training images / 128 = 11 batches
    assert all(r["L"] >= r["grad_last"] for r in steps)   # strict bound holds
    assert [r["kind"] for r in seen if r["kind"] == "status"] == ["status", "status"]
    assert store.get_run(run.run_id)["status"] == "finished"
    assert run.epochs[-1]["test_acc"] > 0.5


def test_divergence_stops_with_status_and_keeps_records(tmp_path):
    cfg = dict(dataset="synthetic", model="mlp", loss="mse", lr_policy="constant", lr=1e9, epochs=3,
               dataset_options={"task": "regression", "n": 400})
    run = train(cfg, store=tmp_path / "s.db", progress=False)
    assert run.status == "diverged" and "step" in run.reason and ("nan" in run.reason or "inf" in run.reason)
    store = RunStore(tmp_path / "s.db")
    assert store.get_run(run.run_id)["status"] == "diverged"
    assert len(store.records(run.run_id, kind="step")) == run.steps


def test_stop_event_ends_within_one_batch(tmp_path):
    stop = threading.Event()

    def stopper(rec):
        if rec["kind"] == "step" and rec["step"] == 4:
            stop.set()
    # flush_every=1: the subscriber sees step 4's record right after step 4 (by default records
    # arrive in batches, a few steps late); the stop event is checked after every batch
    run = train({**QUICK, "epochs": 5, "flush_every": 1}, store=tmp_path / "s.db", subscribers=[stopper],
                stop_event=stop, progress=False)
    assert run.status == "stopped" and run.steps == 5
    assert len(RunStore(tmp_path / "s.db").records(run.run_id, kind="step")) == 5


@pytest.mark.parametrize("bad,field", [
    ({"dataset": "nope"}, "nope"), ({"model": "nope"}, "nope"), ({"loss": "bce"}, "bce"),
    ({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"optimizer": "lbfgs"}, "optimizer"),
])
def test_bad_configs_raise_before_a_run_exists(tmp_path, bad, field):
    with pytest.raises(ConfigError, match=field):
        train({**QUICK, **bad}, store=tmp_path / "s.db", progress=False)
    assert RunStore(tmp_path / "s.db").list_runs() == []


@pytest.mark.parametrize("argv,field", [
    (["--dataset", "nope"], "dataset"), (["--model", "nope"], "model"),
    (["--loss", "bce"], "bce"), (["--epochs", "-1"], "epochs"), (["--epochs", "x"], "epochs"),
    (["--config", "/does/not/exist.toml"], "config"),
])
def test_cli_bad_configs_one_line_exit_2(cli, tmp_path, argv, field):
    code, _, err = cli("train", "--store", tmp_path / "s.db", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and field in err


def test_cli_config_file_and_bad_toml(cli, tmp_path):
    good = tmp_path / "run.toml"
    good.write_text('[train]\ndataset = "digits"\nepochs = 1\nbatch_size = 256\nbound = "corrected"\n')
    code, out, err = cli("train", "--config", good, "--store", tmp_path / "s.db", "--no-report")
    assert code == 0 and "run r-" in out, err
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    code, _, err = cli("train", "--config", bad, "--store", tmp_path / "s.db")
    assert code == 2 and "TOML" in err


def test_presets_are_valid_paper_settings():
    assert preset("mnist-paper").batch_size == 256 and preset("mnist-paper").epochs == 20
    for name in PRESETS:
        cfg = preset(name).validate()
        assert cfg.loss == "softmax_ce"
    assert preset("cifar10-resnet20-fixed").fixed_after == 1
    assert preset("cifar100-resnet164").weight_decay == 1e-4


def test_device_selection():
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            select_device("cuda")


KILLED = textwrap.dedent("""
    import os, signal, sys
    from lipschitz_lab.trainer import train
    cfg = dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=128, epochs=4,
               bound="paper", recompute="epoch", kz="max_abs", max_lr=0.5, seed=3)
    def killer(rec):
        if rec["kind"] == "step" and rec["epoch"] == 2 and rec["step"] % 11 == 3:
            os.kill(os.getpid(), signal.SIGKILL)      # mid-epoch 2, after epoch 1's checkpoint
    train(cfg, store=sys.argv[1], subscribers=[killer], progress=False)
""")


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    db = tmp_path / "killed.db"
    proc = subprocess.run([sys.executable, "-c", KILLED, str(db)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = RunStore(db)
    (info,) = store.list_runs()
    assert info["status"] == "running"
    assert store.last_epoch(info["id"]) == 1                 # every completed epoch kept
    cfg = TrainConfig(**info["config"])
    resumed = train(cfg, store=store, resume=info["id"], progress=False)
    assert resumed.status == "finished"
    whole = train(cfg, store=tmp_path / "whole.db", progress=False)
    a = _strip(store.records(info["id"]))
    b = _strip(RunStore(tmp_path / "whole.db").records(whole.run_id))
    assert len(a) == len(b) and a == b
    # the checkpoint itself loads with weights_only=True
    ckpt = tmp_path / "checkpoints" / f"{info['id']}.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 3


def test_torchrun_two_cpu_processes(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    db = tmp_path / "ddp.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "lipschitz_lab", "train",
         "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--bound", "strict",
         "--store", str(db), "--no-report", "--device", "cpu"],     # gloo, also on a machine with GPUs
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = RunStore(db)
    (info,) = store.list_runs()                               # only rank 0 wrote
    steps = store.records(info["id"], kind="step")
    assert info["status"] == "finished" and len(steps) == 2 * 11   # 1294 / 2 ranks / 64 -> 11 steps
    # the union batch of both ranks: DistributedSampler pads 1294 to 2 x 647 rows, so each epoch
    # is 10 batches of 64 + 64 and a last one of 7 + 7
    assert [r["m"] for r in steps] == ([128] * 10 + [14]) * 2


def test_torchrun_with_more_processes_than_gpus_is_one_line_exit_2(cli, tmp_path, monkeypatch):
    """NCCL needs a GPU per process: rank 1 of 2 on a one-GPU machine says so, before a run exists."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, out, err = cli("train", "--dataset", "digits", "--epochs", "1", "--store", tmp_path / "s.db",
                         "--no-report", "--device", "cuda")
    assert code == 2 and err.count("\n") == 1
    assert "LOCAL_RANK=1" in err and "--nproc_per_node=1" in err and "--device cpu" in err
    assert not (tmp_path / "s.db").exists() or RunStore(tmp_path / "s.db").list_runs() == []
