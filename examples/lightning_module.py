"""LipschitzLR in PyTorch Lightning: ``configure_optimizers`` returns it with interval "step".

    python examples/lightning_module.py     # digits from scikit-learn, an MLP, the CPU, seconds

Needs the optional extra: ``pip install 'lipschitz-lab[lightning]'``.

Where Lightning calls what, in its automatic optimization (lightning 2.x:
``loops/optimization/automatic.py`` and ``loops/training_epoch_loop.py``), per batch::

    optimizer.step(closure)   # the closure: training_step -> optimizer.zero_grad() -> backward
    scheduler.step()          # interval="step": right after the optimizer step

1) The gradients.  ``LipschitzLR.step()`` reads ``.grad`` (the measured gradient maxima that
   its records hold beside L, and the NaN/inf check on them), so it must run after
   ``optimizer.step()`` and before the gradients are zeroed.  Lightning zeroes them inside
   the *next* batch's closure, just before that batch's backward, so at ``scheduler.step()``
   this batch's gradients are still there: nothing to override for them.
2) The first rate.  Lightning runs the forward and backward *inside* ``optimizer.step(closure)``,
   that is after the optimizer's step pre-hooks.  LipschitzLR sets its very first rate from the
   first batch in such a pre-hook (the authors' epoch-0 rate), so under Lightning's order the
   first update would use the optimizer's initial lr (0.1 below), not 1/L, while the record
   says 1/L.  ``optimizer_step`` below runs the closure first and then steps, which is the
   order of the plain loop (forward, backward, ``opt.step()``, ``sched.step()``, ``zero_grad()``):
   every update, the first included, uses the scheduler's 1/L.

``main()`` checks both: the rate each update used (read off the optimizer after the update)
equals the scheduler's records, and the gradient it recorded is the one the update used.
"""
from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_lab import LipschitzLR

# Lightning suggests worker processes for any DataLoader; an in-memory data set needs none
warnings.filterwarnings("ignore", ".*does not have many workers.*")


class DigitsMLP(pl.LightningModule):
    """An MLP on 8x8 digits, its rate lr = 1/L from LipschitzLR (strict bound, every step)."""

    def __init__(self, bound: str = "strict"):
        super().__init__()
        self.bound = bound
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.criterion = F.cross_entropy
        self.records: list[dict] = []     # LipschitzLR's step records (lr, K_z, L, grad_last, ...)
        self.lr_used: list[float] = []    # the rate each update used, read off the optimizer
        self.grad_seen: list[float] = []  # max |grad| of the last layer, measured here before each update
        self.losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)          # lr is overwritten with 1/L
        sched = LipschitzLR(opt, self, "softmax_ce", num_classes=10, bound=self.bound, recompute="step")
        self.criterion = sched.wrap_loss(F.cross_entropy)         # records ||y|| (mse needs it)
        sched.subscribe(self.records.append)
        opt.register_step_post_hook(lambda o, args, kwargs: self.lr_used.append(float(o.param_groups[0]["lr"])))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # 2) above: forward and backward first, then the update, so the step pre-hook of
        # LipschitzLR sees this batch (the first rate comes from the first batch)
        optimizer_closure()
        optimizer.step()

    def on_before_optimizer_step(self, optimizer):
        last = self.net[-1]
        self.grad_seen.append(max(p.grad.abs().max().item() for p in last.parameters()))

    def on_train_epoch_end(self):
        self.lr_schedulers().epoch_end()       # Lightning steps an interval="step" scheduler per batch only

    def on_train_end(self):
        self.lr_schedulers().close()           # deliver the last records (a few steps late), remove the hooks


def digits_loader(batch_size: int = 64, seed: int = 0) -> DataLoader:
    X, y = load_digits(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float32)
    return DataLoader(TensorDataset(X, torch.tensor(y)), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def main(epochs: int = 3, max_steps: int = -1, bound: str = "strict") -> DigitsMLP:
    pl.seed_everything(0, verbose=False)
    model = DigitsMLP(bound)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, max_steps=max_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, digits_loader())
    probe = model.lr_schedulers().probe
    n = len(model.records)
    print(f"{n} steps; the probe measures layer {probe.layer_name!r}: {probe.layer}")
    print(f"every update used the scheduler's 1/L: {model.lr_used == [r['lr'] for r in model.records]}")
    print(f"the recorded gradient is the update's: {model.grad_seen == [r['grad_last'] for r in model.records]}")
    for r in model.records[:: max(1, n // 6)] + model.records[-1:]:
        print(f"step {r['step']:>3}: loss {model.losses[r['step']]:.3f}  lr {r['lr']:.3f}  K_z {r['K_z']:.2f}  "
              f"grad_last {r['grad_last']:.4f} <= L {r['L']:.4f}")
    return model


if __name__ == "__main__":
    main()
