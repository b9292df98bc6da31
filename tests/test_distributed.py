"""Two gloo ranks on CPU: identical rates, equal to one process on the union batch."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lipschitz_lab import LipschitzLR
from lipschitz_lab.losses import make_criterion

WORLD = 2
KEYS = ("lr", "L", "L_paper", "L_corrected", "L_strict", "K_z_frobenius", "K_z_max_abs", "m",
        "K_a", "y_norm", "grad_last", "w_max", "lr_next")
CASES = {  # loss: (outputs, bound, kz)
    "softmax_ce": (4, "paper", "frobenius"),
    "mse": (1, "strict", "max_abs"),
}


def union_batches(loss, steps=4, m=12):
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(steps):
        x = torch.randn(m, 5, generator=g)
        y = torch.randint(0, 4, (m,), generator=g) if loss == "softmax_ce" else torch.randn(m, generator=g)
        out.append((x, y))
    return out


def build(loss):
    torch.manual_seed(0)
    k, bound, kz = CASES[loss]
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, k))
    return model, bound, kz, k


def rows(t, shard):
    return t if shard is None else t[shard[0]::shard[1]]


def train(loss, shard=None):
    """Records of a few steps; ``shard=(rank, world)`` trains under DDP on rows rank::world."""
    model, bound, kz, k = build(loss)
    net = DistributedDataParallel(model) if shard else model
    opt = torch.optim.SGD(net.parameters(), lr=0.01, weight_decay=1e-3)
    sched = LipschitzLR(opt, net, loss, num_classes=k if k > 1 else None, bound=bound, kz=kz,
                        recompute="step")
    crit = sched.wrap_loss(make_criterion(loss))
    records = []
    for x, y in union_batches(loss):
        x, y = rows(x, shard), rows(y, shard)
        crit(net(x), y).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        records.append({key: sched.last_record.get(key) for key in KEYS[:-1]} | {"lr_next": sched.get_last_lr()[0]})
    # the exact protocol's pass: rank r holds rows r::world of each union batch
    loader = [(rows(x, shard), rows(y, shard)) for x, y in union_batches(loss, steps=3, m=10)]
    measured = sched.measure_epoch(loader)
    return records, {key: measured[key] for key in ("K_z_frobenius", "K_z_max_abs", "m", "K_a", "y_norm", "lr")}


def _worker(rank, init_method, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        torch.save({loss: train(loss, shard=(rank, WORLD)) for loss in CASES}, f"{out_path}.{rank}")
        dist.barrier()       # no rank tears gloo down while the other still uses it (that aborts it)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = str(tmp / "records")
    mp.spawn(_worker, args=(f"file://{tmp / 'init'}", out), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("loss", list(CASES))
def test_ranks_use_identical_rates_equal_to_the_union_batch(ranks, loss):
    single_records, single_measured = train(loss)
    (rec0, meas0), (rec1, meas1) = ranks[0][loss], ranks[1][loss]
    assert rec0 == rec1 and meas0 == meas1                     # bit-identical on both ranks
    assert all(r["m"] == 12 for r in rec0) and meas0["m"] == 10  # the union batch size
    for got, want in zip(rec0, single_records):
        for key in KEYS:
            if want[key] is None:
                assert got[key] is None, key
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-5), key
    for key, want in single_measured.items():
        assert (meas0[key] is None) if want is None else meas0[key] == pytest.approx(want, rel=1e-5), key
