"""The terminal's progress bar: steps of the epoch, with the loss and rate of the newest record."""
from __future__ import annotations

from lipschitz_lab.config import TrainConfig
from lipschitz_lab.records import Record


class ProgressBar:
    """tqdm over one epoch's steps; records arrive in batches, so the postfix trails by a few steps."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        self.config, self.steps_per_epoch = config, steps_per_epoch
        self.bar = None

    def start_epoch(self, epoch: int) -> None:
        from tqdm.auto import tqdm
        self.close()
        self.bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                        leave=False)

    def on_record(self, record: Record) -> None:
        if self.bar is None or record.get("kind") != "step":
            return
        self.bar.update(1)
        lr = record.get("lr")
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr="-" if lr is None else f"{lr:.3g}",
                             refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
