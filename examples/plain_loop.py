"""LipschitzLR in a plain PyTorch loop (the README's example, run by the tests)."""
import torch
from sklearn.datasets import load_digits
from torch import nn

from lipschitz_lab import LipschitzLR

torch.manual_seed(0)

X, y = load_digits(return_X_y=True)
X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float32)
y = torch.tensor(y)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = LipschitzLR(opt, model, "softmax_ce", num_classes=10, bound="strict", recompute="step")
criterion = sched.wrap_loss(nn.functional.cross_entropy)   # the targets: m, the exact loss check

for epoch in range(5):
    total = 0.0
    for idx in torch.randperm(len(X)).split(64):
        loss = criterion(model(X[idx]), y[idx])
        total += loss.item() * len(idx)
        loss.backward()
        opt.step()
        sched.step()                 # reads K_z and the gradients, sets the next rate
        opt.zero_grad()
    sched.epoch_end()
    r = sched.last_record
    print(f"epoch {epoch}: loss {total / len(X):.3f}  lr {r['lr']:.3f}  K_z {r['K_z']:.2f}  "
          f"grad_last {r['grad_last']:.4f} <= L {r['L']:.4f}")
