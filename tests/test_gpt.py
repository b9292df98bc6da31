"""tiny_gpt and the transformer baselines: parameter counts against closed-form sums, the causal
mask, weight tying against an untied twin, nanoGPT's schedule; the lab trains tiny_gpt on both
sequence data sets from the CLI, the training panel and a study."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipschitz_lab.config import ConfigError, TrainConfig
from lipschitz_lab.data import get_dataset, make_eval_loader
from lipschitz_lab.losses import make_criterion
from lipschitz_lab.models import count_parameters, default_model_for, get_model
from lipschitz_lab.policies import POLICIES, PolicyContext
from lipschitz_lab.runs import RunStore

V, T = 11, 16
DATASETS = ("modular_addition", "text")
# a few steps of each: seconds, not minutes
GPT_RUN = dict(model="tiny_gpt", batch_size=16, epochs=1, max_steps=4, checkpoint=False, device="cpu")
ADAMW = dict(lr_policy="adamw_cosine", lr=3e-3, weight_decay=0.1)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread on 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(**options) -> nn.Module:
    torch.manual_seed(0)
    return get_model("tiny_gpt", input_shape=(T,), num_outputs=V, **options)


def gpt_parameters(V: int, T: int, d: int, layers: int, tied: bool) -> int:
    """Counted from the layer sizes alone: embeddings, per block 2 LayerNorms (gain + bias),
    the qkv and output projections, the 4d MLP; the final LayerNorm; lm_head without bias."""
    ln = 2 * d
    block = ln + (d * 3 * d + 3 * d) + (d * d + d) + ln + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return V * d + T * d + layers * block + ln + (0 if tied else V * d)


def tokens(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(V, (n, T), generator=torch.Generator().manual_seed(seed))


# -- the model -------------------------------------------------------------------------------
@pytest.mark.parametrize("options, d, layers", [({}, 64, 2),
                                                ({"n_embd": 32, "n_head": 2, "n_layer": 3}, 32, 3)])
def test_shapes_counts_and_lm_head_is_the_last_linear(options, d, layers):
    model = build(**options).eval()
    assert count_parameters(model) == gpt_parameters(V, T, d, layers, tied=False)
    assert list(model.modules())[-1] is model.lm_head
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1] is model.lm_head
    seen = {}
    model.lm_head.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0], out=out))
    with torch.no_grad():
        out = model(tokens())
    assert out.shape == (3, T, V) and torch.equal(seen["out"], out)       # nothing after lm_head
    assert seen["inp"].shape == (3, T, d)                                  # the penultimate activations
    assert default_model_for(get_dataset("modular_addition", p=3)) == "tiny_gpt"


@pytest.mark.parametrize("t", [0, 7, T - 1])
def test_a_token_changes_no_logit_before_it(t):
    model = build().double().eval()
    x = tokens()
    x2 = x.clone()
    x2[:, t] = (x[:, t] + 1) % V
    with torch.no_grad():
        a, b = model(x), model(x2)
    # float64, the same rows through the same kernels: equal to rounding
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-12)
    assert (a[:, t] - b[:, t]).abs().amax() > 1e-4           # the changed position itself moves


def test_the_causal_check_can_fail(monkeypatch):
    """Without the causal mask a later token reaches earlier logits, and the check above sees it."""
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, is_causal, **k: sdpa(*a, **k))
    model = build().double().eval()
    x = tokens()
    x2 = x.clone()
    x2[:, -1] = (x[:, -1] + 1) % V
    with torch.no_grad():
        assert (model(x)[:, 0] - model(x2)[:, 0]).abs().amax() > 1e-6


def test_tied_weights_are_one_tensor_with_both_gradients():
    tied, untied = build(tie_weights=True).double(), build().double()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert count_parameters(tied) == gpt_parameters(V, T, 64, 2, tied=True)
    assert count_parameters(tied) == count_parameters(untied) - V * 64
    # the untied twin with both matrices set to the tied one's: the tied gradient is the sum of its two
    untied.load_state_dict(tied.state_dict())
    torch.testing.assert_close(untied.transformer.wte.weight, untied.lm_head.weight)
    x, y = tokens(4), tokens(4, seed=1)
    for m in (tied, untied):
        F.cross_entropy(m(x).reshape(-1, V), y.reshape(-1)).backward()
    torch.testing.assert_close(tied.lm_head.weight.grad,
                               untied.lm_head.weight.grad + untied.transformer.wte.weight.grad)


@pytest.mark.parametrize("options, needle", [
    ({"n_embd": 30}, "n_embd=30"), ({"block_size": 8}, "block_size=8"), ({"tie_weights": 1}, "tie_weights=1"),
    ({"dropout": 1.0}, "dropout=1.0"), ({"n_layer": 0}, "n_layer=0"), ({"width": 3}, "width=3"),
])
def test_bad_options_name_the_field_and_value(options, needle):
    with pytest.raises(ValueError, match=needle):
        build(**options)


def test_bad_inputs_are_one_line():
    with pytest.raises(ValueError, match=r"input_shape=\(1, 8, 8\)"):
        get_model("tiny_gpt", input_shape=(1, 8, 8), num_outputs=V)
    with pytest.raises(ValueError, match="integer tokens; got a torch.float32"):
        build()(torch.rand(2, T))
    with pytest.raises(ValueError, match="T=17 tokens is longer than block_size=16"):
        build()(torch.zeros(1, T + 1, dtype=torch.int64))


@pytest.mark.parametrize("dataset, model", [("digits", "tiny_gpt"), ("text", "mlp"),
                                            ("modular_addition", "mnist_cnn")])
def test_a_model_that_does_not_fit_the_data_is_one_line_naming_both(cli, tmp_path, dataset, model):
    code, _, err = cli("train", "--dataset", dataset, "--model", model, "--epochs", "1", "--device", "cpu",
                       "--store", tmp_path / "s.db", "--no-report")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"model={model!r}" in lines[0] and f"dataset={dataset!r}" in lines[0]
    assert RunStore(tmp_path / "s.db").list_runs() == []


def test_a_text_file_that_is_not_there_is_one_line_from_the_cli(cli, tmp_path):
    missing = tmp_path / "absent.txt"
    (tmp_path / "run.toml").write_text(f'[train]\ndataset = "text"\nmodel = "tiny_gpt"\n'
                                       f'dataset_options = {{path = "{missing.as_posix()}"}}\n')
    code, _, err = cli("train", "--config", tmp_path / "run.toml", "--store", tmp_path / "s.db", "--no-report")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].endswith(f"path={str(missing)!r}: no such file"), err


# -- the trainer's arithmetic on tokens --------------------------------------------------------
@pytest.mark.parametrize("dataset", DATASETS)
def test_evaluate_is_the_mean_over_the_scored_tokens(dataset):
    from lipschitz_lab.training.steps import evaluate
    s = get_dataset(dataset, **({"p": 11} if dataset == "modular_addition" else {}))
    model = get_model("tiny_gpt", input_shape=s.input_shape, num_outputs=s.num_outputs).double()
    loader = make_eval_loader(s.test, device="cpu", batch_size=7)          # several batches
    loss, acc = evaluate(model, loader, make_criterion("softmax_ce"), s.task, torch.device("cpu"))
    # the oracle: the whole split at once, only the positions whose target is not -100
    x, y = s.test.as_tensors()
    with torch.no_grad():
        out = model(x)
    keep = y != -100
    # evaluate reads the logits in float32 (as the trainer does): float32 rounding
    assert loss == pytest.approx(F.cross_entropy(out[keep], y[keep]).item(), rel=1e-6)
    assert acc == pytest.approx((out[keep].argmax(-1) == y[keep]).double().mean().item(), abs=1e-12)


# -- the transformer baselines -----------------------------------------------------------------
def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's train.py, as published."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_adamw_cosine_is_nanogpts_recipe(tmp_path):
    from lipschitz_lab.trainer import train
    store = RunStore(tmp_path / "s.db")
    # 692 training equations / 64 = 11 steps an epoch, 3 epochs, max_steps 30: warm-up ceil(0.6) = 1
    run = train({**GPT_RUN, **ADAMW, "dataset": "modular_addition", "batch_size": 64, "epochs": 3,
                 "max_steps": 30}, store=store, progress=False)
    lrs = [r["lr"] for r in store.records(run.run_id, "step")]
    assert run.status == "finished" and len(lrs) == 30
    want = [nanogpt_get_lr(i, 3e-3, 1, 30, 3e-4) for i in range(30)]
    assert lrs == pytest.approx(want, rel=1e-12)

    model = build(tie_weights=True)
    policy = POLICIES["adamw_cosine"](TrainConfig(**ADAMW), model, PolicyContext(None, 10, V, "cpu", None))
    decay, no_decay = policy.optimizer.param_groups
    assert isinstance(policy.optimizer, torch.optim.AdamW) and decay["betas"] == (0.9, 0.95)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    named = {id(p): n for n, p in model.named_parameters()}                # the tied tensor once
    assert sorted(named[id(p)] for p in no_decay["params"]) == sorted(
        n for n, p in model.named_parameters() if n.endswith(".bias") or ".ln_" in n)
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == count_parameters(model)


def test_schedule_free_adamw_trains_at_y_and_evaluates_at_x():
    model = build()
    policy = POLICIES["schedulefree_adamw"](TrainConfig(lr=2.5e-3, epochs=1), model,
                                            PolicyContext(None, 20, V, "cpu", None))
    for seed in range(3):
        F.cross_entropy(model(tokens(seed=seed)).reshape(-1, V), tokens(seed=seed + 9).reshape(-1)).backward()
        policy.optimizer.step()
        policy.optimizer.zero_grad()
    y = [p.detach().clone() for p in model.parameters()]
    policy.on_eval()
    assert not policy.optimizer.param_groups[0]["train_mode"]
    assert any(not torch.equal(a, p) for a, p in zip(y, model.parameters()))   # x is not y
    policy.on_train()
    assert policy.optimizer.param_groups[0]["train_mode"]
    for a, p in zip(y, model.parameters()):
        torch.testing.assert_close(p, a, rtol=1e-6, atol=1e-7)                 # y again, to rounding


# -- the lab trains it: CLI, panel, study ------------------------------------------------------
@pytest.mark.parametrize("dataset", DATASETS)
def test_tiny_gpt_trains_from_the_cli(cli, tmp_path, dataset):
    code, out, err = cli("train", "--dataset", dataset, "--model", "tiny_gpt", "--lr-policy", "adamw_cosine",
                         "--lr", "3e-3", "--batch-size", "16", "--epochs", "1", "--max-steps", "4",
                         "--device", "cpu", "--no-checkpoint", "--store", tmp_path / "s.db", "--no-report")
    assert code == 0, err
    store = RunStore(tmp_path / "s.db")
    (info,) = store.list_runs()
    steps, (epoch,) = store.records(info["id"], "step"), store.records(info["id"], "epoch")
    assert info["status"] == "finished" and "finished" in out and len(steps) == 4
    # four full batches of 16 sequences: the epoch's figures are the steps' means
    assert epoch["train_loss"] == pytest.approx(sum(s["loss"] for s in steps) / 4, rel=1e-9)
    assert epoch["train_acc"] == pytest.approx(sum(s["acc"] for s in steps) / 4, rel=1e-9)
    assert all(0 <= s["acc"] <= 1 for s in steps) and 0 <= epoch["val_acc"] <= 1


def panel_run(store, dataset: str, **controls):
    """Choose the data set, tiny_gpt and ``controls`` in the training panel, press Start, wait."""
    from lipschitz_lab.ui import training_panel
    panel = training_panel(store, max_steps=3, epochs=1, checkpoint=False, lr=3e-3, batch_size=16)
    assert dataset in panel.controls["dataset"].options and "tiny_gpt" in panel.controls["model"].options
    for name, value in {"dataset": dataset, "model": "tiny_gpt", **controls}.items():
        panel.controls[name].value = value
    panel.start_button.click()
    assert panel.wait(120), "the training thread did not end"
    panel.flush()
    return panel


@pytest.mark.parametrize("dataset", DATASETS)
def test_tiny_gpt_trains_from_the_panel(tmp_path, dataset):
    with RunStore(tmp_path / "s.db") as store:
        panel = panel_run(store, dataset, lr_policy="schedulefree_adamw")
        assert panel.status_text.startswith("finished"), panel.status_text
        run = store.get_run(panel.run_id)
        assert (run["config"]["dataset"], run["config"]["model"]) == (dataset, "tiny_gpt")
        assert len(store.records(panel.run_id, "step")) == 3


@pytest.mark.parametrize("dataset", DATASETS)
def test_tiny_gpt_races_the_transformer_baselines_in_a_study(tmp_path, dataset):
    from lipschitz_lab.studies.runner import run_study
    from lipschitz_lab.studies.spec import StudySpec, select
    spec = StudySpec("gpt-tiny", {**GPT_RUN, "dataset": dataset, "max_steps": 3},
                     select(["lipschitz-strict-step-sgd", "transformer-baselines"]))
    assert {p.lr_policy for p in spec.policies} == {"lipschitz", "adamw_cosine", "prodigy",
                                                    "schedulefree_adamw"}
    store = RunStore(tmp_path / "s.db")
    run_study(spec, store)
    runs = store.list_runs()
    assert len(runs) == 4 and {r["status"] for r in runs} == {"finished"}, [r["reason"] for r in runs]


@pytest.mark.parametrize("preset, dataset", [("gpt-quick", "text"), ("gpt-quick-modadd", "modular_addition")])
def test_the_gpt_presets_race_lipschitz_against_the_three_baselines(preset, dataset):
    from lipschitz_lab.studies.spec import study_preset
    spec = study_preset(preset)
    plans = spec.runs()                                   # every config validates
    assert (spec.base["dataset"], spec.base["model"]) == (dataset, "tiny_gpt")
    entries = {p.name: p.overrides for p in spec.policies}
    assert {o["lr_policy"] for o in entries.values()} == {"lipschitz", "adamw_cosine", "prodigy",
                                                          "schedulefree_adamw"}
    assert {o.get("bound") for o in entries.values() if o["lr_policy"] == "lipschitz"} == {
        "strict", "smooth", "curvature", "directional"}
    assert spec.base["sharpness_every"] >= 1                 # the second race reads the instruments
    assert all(o["recompute"] == "step" for o in entries.values() if o["lr_policy"] == "lipschitz")
    assert len(plans) == len(entries) * len(spec.seeds)


# -- LipschitzLR on tiny_gpt ---------------------------------------------------------------------
@pytest.mark.parametrize("bound", ["paper", "corrected", "strict", "smooth"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_bound_trains_tiny_gpt_with_m_the_scored_tokens(tmp_path, dataset, bound):
    from lipschitz_lab.trainer import train
    store = RunStore(tmp_path / "s.db")
    config = {**GPT_RUN, "dataset": dataset, "lr_policy": "lipschitz", "bound": bound, "recompute": "step"}
    run = train(config, store=store, progress=False)
    steps = store.records(run.run_id, "step")
    assert run.status == "finished" and len(steps) == 4, run.reason
    # modular_addition scores one token a sequence, text all T = 64
    assert {s["m"] for s in steps} == {16 if dataset == "modular_addition" else 16 * 64}
    assert all(s["lr"] > 0 and s["K_z"] > 0 and s["L"] > 0 for s in steps)
    if bound == "strict":
        assert all(s["grad_last"] <= s["L"] for s in steps)


def test_lipschitz_on_tiny_gpt_from_the_panel(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        panel = panel_run(store, "modular_addition", lr_policy="lipschitz", bound="strict", recompute="step")
        assert panel.status_text.startswith("finished"), panel.status_text
        assert store.records(panel.run_id, "step")[0]["bound"] == "strict"
