"""Small real data sets, batches, an MLP and the standard loop, shared by the scheduler's tests."""
from __future__ import annotations

import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from torch import nn


def dataset(name):
    """Standardised features (and mse target) as float32 tensors."""
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        y_t = torch.tensor(y, dtype=torch.long)
    elif name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
        y_t = torch.tensor(y, dtype=torch.float32)
    else:
        X, y = load_diabetes(return_X_y=True)
        y_t = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return torch.tensor(X, dtype=torch.float32), y_t


def batches(X, y, size, seed, drop_last=False):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(X), generator=g)
    stop = len(X) - len(X) % size if drop_last else len(X)
    return [(X[idx[i:i + size]], y[idx[i:i + size]]) for i in range(0, stop, size)]


def mlp(d, out, seed=0, hidden=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out))


def run(model, opt, sched, crit, epochs, *, start_epoch=0, skip=0, stop=None):
    """The standard loop; returns the step records.  ``epochs[e]`` is a batch list."""
    records = []
    for e in range(start_epoch, len(epochs)):
        for i, (x, y) in enumerate(epochs[e]):
            if e == start_epoch and i < skip:
                continue
            if stop is not None and (e, i) == stop:
                return records
            out = model(x)
            loss = crit(out, y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            records.append(sched.last_record)
        sched.epoch_end()
    return records


def kill_mid_run(store: str, config: dict, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> None:
    """Train ``config`` and SIGKILL this process at the given step of ``epoch`` (a real kill: no
    finally block runs, the store keeps what was committed).  Run it in a child process."""
    import os
    import signal

    from lipschitz_lab.trainer import train

    def killer(rec):
        if rec["kind"] == "step" and rec["epoch"] == epoch and rec["step"] % steps_per_epoch == step_in_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
    train({**config, "flush_every": 1}, store=store, subscribers=[killer], progress=False)


def signal_after_steps(after: int | None, sig: int) -> None:
    """In a forked child: one torch thread, and the trainer's ``train_step`` patched so that the
    process sends itself ``sig`` once ``after`` steps are done (``None``: never)."""
    import os

    import lipschitz_lab.trainer as trainer
    torch.set_num_threads(1)
    real, done = trainer.train_step, []

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        done.append(1)
        if len(done) == after:
            os.kill(os.getpid(), sig)
        return out

    trainer.train_step = step
