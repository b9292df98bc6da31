"""Kill one run of every policy in the study catalogue mid-run (a real SIGKILL, with step
records still pending), resume it, and compare with an uninterrupted run of the same config:
the records must be equal (issue 10 item 4, issue 22 items 6 and 7): LipschitzLR's variants,
the scaled rates, the smoothness rules (the layer-wise one too), the torch schedulers, the LR
range tests and every parameter-free optimizer.

Each kill is a fork of this process (no interpreter or torch start-up): the child trains and
SIGKILLs itself right after a chosen step, so nothing in a ``finally`` runs and what was not
committed is lost.  The data are the smallest that still cross an epoch boundary with records
pending: 96 digits in 3 batches an epoch, 2 epochs, the kill after epoch 1's second step; with
``flush_every=2`` that is the 5th step, so the StepLog holds one undelivered entry and the
StoreWriter the whole of epoch 1 (nothing of it is in the store).
"""
from __future__ import annotations

import os
import signal

import pytest
import torch

from lipschitz_lab.runs import RunStore
from lipschitz_lab.studies.spec import catalogue
from lipschitz_lab.trainer import train
from train_helpers import signal_after_steps

STEPS_PER_EPOCH = 3
FLUSH_EVERY = 2
KILL_AFTER = STEPS_PER_EPOCH + 2          # steps done when the child dies: 5, not a multiple of 2
BASE = dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=32,
            train_subset=32 * STEPS_PER_EPOCH, epochs=2, seed=5, max_lr=1.0, device="cpu", flush_every=FLUSH_EVERY)
#: not in the catalogue: the layer-wise smoothness rule (its per-layer power iterations resume too)
LAYERWISE = {"lr_policy": "lipschitz", "bound": "smooth", "recompute": "step", "optimizer": "momentum",
             "smooth_layerwise": True}
CASES = {**{name: entry.overrides for name, entry in catalogue().items()},
         "lipschitz-smooth-layerwise": LAYERWISE}
assert KILL_AFTER % FLUSH_EVERY


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread here and in every forked child: the same float sums on both sides of the
    kill (and a child forked from a process whose OpenMP pool ran would not get a working one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _strip(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def train_and_die(config: dict, store: str, after: int) -> int:
    """Fork; the child trains ``config`` and SIGKILLs itself once ``after`` steps are done.
    Returns the child's wait status."""
    pid = os.fork()
    if pid == 0:                                       # the child: never returns into pytest
        try:
            import lipschitz_lab.trainer as trainer
            signal_after_steps(after, signal.SIGKILL)
            trainer.train(config, store=store, progress=False)
        finally:
            os._exit(3)                               # it finished without being killed
    return os.waitpid(pid, 0)[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_a_killed_run_resumes_to_the_records_of_an_uninterrupted_run(tmp_path, name):
    config = {**BASE, **CASES[name], "name": name}
    whole = train(config, store=tmp_path / "whole.db", progress=False)
    b = _strip(RunStore(tmp_path / "whole.db").records(whole.run_id))
    # a run that diverges before the planned kill dies one step before its last (mid-epoch 0: no
    # checkpoint yet, and the resume starts it again from scratch)
    after = KILL_AFTER if whole.steps > KILL_AFTER else max(whole.steps - 1, 1)
    status = train_and_die(config, str(tmp_path / "killed.db"), after)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    store = RunStore(tmp_path / "killed.db")
    (info,) = store.list_runs()
    assert info["status"] == "running"
    if after == KILL_AFTER:                            # epoch 0 and its checkpoint are in; epoch 1 is not
        assert store.last_epoch(info["id"]) == 0 and store.checkpoint_path(info["id"]).exists()
        assert max(r["step"] for r in store.records(info["id"], "step")) == STEPS_PER_EPOCH - 1
    resumed = train(config, store=store, resume=info["id"], progress=False)
    assert (resumed.status, resumed.reason, resumed.steps) == (whole.status, whole.reason, whole.steps)
    a = _strip(store.records(info["id"]))
    assert [r["kind"] for r in a] == [r["kind"] for r in b]
    assert a == b
