"""LipschitzLR in a minimal GPT training loop, written the way nanoGPT's train.py is.

    python examples/gpt_loop.py            # the lab's own text, a tiny model, the CPU, ~20 s

What it has that an image classifier's loop does not, and what LipschitzLR needs for each:

1) Mixed precision: autocast (fp16 on CUDA, bf16 on the CPU) and ``torch.amp.GradScaler``.
   Pass ``scaler=scaler``: the loss-scale check divides the scaler's scale out of the gradient
   it reads, on the device, and a step the scaler skips (inf/NaN) is not measured.
2) Gradient accumulation: ``ACCUM`` micro-batches, each loss divided by ``ACCUM`` as nanoGPT
   does; the probe measures them as one union batch (m adds up, K_z is over all of them).
3) The loss computed inside ``forward`` (``logits, loss = model(x, y)``): the criterion never
   passes through ``wrap_loss``, so the loop calls ``sched.observe(y)``: m is then the targets
   that count (padding -100 excluded) and the exact check runs.  Without it, the target-free
   check still holds |∂E/∂z| to S/m per entry, and a warning says so once.
4) (B, T, V) logits and weight tying: the probe's last layer is ``lm_head``; its input is
   (B, T, d), every position a row; with the embedding tied, the bound and ``grad_last`` speak
   of ``lm_head``'s own use (δᵀA), not the embedding's share.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipschitz_lab import LipschitzLR
from lipschitz_lab.data import get_dataset
from lipschitz_lab.models import get_model

ACCUM = 2             # micro-batches per update
BATCH = 16            # sequences per micro-batch


class GPTWithLoss(nn.Module):
    """nanoGPT's interface: ``forward(idx, targets)`` returns the logits and the mean loss."""

    def __init__(self, vocab: int, block: int):
        super().__init__()
        self.gpt = get_model("tiny_gpt", input_shape=(block,), num_outputs=vocab, tie_weights=True)

    def forward(self, idx, targets=None):
        logits = self.gpt(idx)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)


@torch.no_grad()
def val_loss(model, data) -> float:
    model.eval()
    out = sum(model(x, y)[1].item() for x, y in data) / len(data)
    model.train()
    return out


def main(steps: int = 60, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    splits = get_dataset("text", block_size=32)
    cuda = torch.cuda.is_available()
    device, amp = ("cuda", torch.float16) if cuda else ("cpu", torch.bfloat16)
    X, Y = (t.to(device) for t in splits.train.tensors)
    val = [(x.to(device), y.to(device)) for x, y in zip(*(t[:64].split(BATCH) for t in splits.val.tensors))]
    model = GPTWithLoss(splits.num_classes, 32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    scaler = torch.amp.GradScaler(device, enabled=cuda)          # fp16 needs it; bf16 does not
    sched = LipschitzLR(opt, model, "softmax_ce", num_classes=splits.num_classes, bound="strict",
                        recompute="step", variant_optimizer="adam", scaler=scaler)
    records = []
    sched.subscribe(records.append)
    before = val_loss(model, val)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(steps):
        for _ in range(ACCUM):
            idx = torch.randint(len(X), (BATCH,), generator=g).to(device)
            x, y = X[idx], Y[idx]
            with torch.autocast(device, dtype=amp):
                _, loss = model(x, y)
            sched.observe(y)                          # 3): the loss is inside forward
            scaler.scale(loss / ACCUM).backward()     # 2): nanoGPT divides by the accumulation
        scaler.step(opt)
        scaler.update()
        sched.step()                                  # reads K_z and .grad: before zero_grad
        opt.zero_grad(set_to_none=True)
    sched.close()                                     # the last records reach the subscribers
    after = val_loss(model, val)
    last = records[-1]
    print(f"{len(records)} updates of m = {last['m']} tokens; val loss {before:.3f} -> {after:.3f}; "
          f"lr {last['lr']:.3g}; lm_head's gradient {last['grad_last']:.3g} <= L {last['L']:.3g}")
    return {"records": records, "val_before": before, "val_after": after}


if __name__ == "__main__":
    main()
