"""``compile=True``: the model runs under torch.compile while the probe's hooks run eagerly,
outside the graph; eager and compiled runs agree on K_z and the rate (issue 11, item 4)."""
from __future__ import annotations

import pytest
import torch

from lipschitz_lab.runs import RunStore
from lipschitz_lab.trainer import train


@pytest.mark.slow
@pytest.mark.parametrize("bound,recompute", [("strict", "step"), ("smooth", "step"), ("paper", "epoch")])
def test_eager_and_compiled_agree_on_K_z_and_the_rate(tmp_path, bound, recompute):
    import torch._dynamo
    cfg = dict(dataset="digits", model="mlp", loss="softmax_ce", batch_size=128, epochs=2, bound=bound,
               recompute=recompute, max_steps=14, seed=0)
    eager = train(cfg, store=tmp_path / "s.db", progress=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train({**cfg, "compile": True}, store=tmp_path / "s.db", progress=False)
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0          # dynamo compiled the model
    assert eager.status == compiled.status == "finished"
    a = RunStore(tmp_path / "s.db").records(eager.run_id, kind="step")
    b = RunStore(tmp_path / "s.db").records(compiled.run_id, kind="step")
    assert len(a) == len(b) == 14
    for x, y in zip(a, b):
        assert y["K_z"] == pytest.approx(x["K_z"], rel=1e-4)
        assert y["lr"] == pytest.approx(x["lr"], rel=1e-4)
        assert y["grad_last"] == pytest.approx(x["grad_last"], rel=1e-4)
