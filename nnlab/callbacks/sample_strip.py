"""A GAN's samples at a few epochs through training, for the samples-over-training plot."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

SEED = 0  # one fixed noise batch: the rows differ only because the generator learned


class SampleStrip(pl.Callback):
    """Keeps `samples` generated images at up to `rows` epochs spread evenly over
    trainer.max_epochs, and at the last epoch trained, as uint8 on the CPU (a few KB each).

    Works with any task that has `generate(n, seed)` (samples in data space) and `data_range`
    (their low and high), as nnlab's GanTask does. The frames travel in checkpoints, so a
    resumed run keeps the rows of its earlier sessions."""

    def __init__(self, samples: int = 8, rows: int = 8) -> None:
        self.samples, self.rows = samples, rows
        self.frames: dict[int, Tensor] = {}  # epoch (from 1) -> (samples, C, H, W) uint8

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A validation at the epoch's end comes before on_train_epoch_end, and so do the
        # checkpoints it saves (every checkpoint, when validation is not every epoch): the frame
        # must be in them for a resumed run to keep it.
        if trainer.state.fn == "fit" and trainer.is_last_batch:
            self.on_train_epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.frames and epoch in self._chosen(trainer.max_epochs):
            self._take(epoch, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # early stopping or a divergence may end training before max_epochs
        if trainer.current_epoch and trainer.current_epoch not in self.frames:
            self._take(trainer.current_epoch, pl_module)

    def _chosen(self, max_epochs: int) -> set[int]:
        last = max(max_epochs, 1)
        if last <= self.rows:
            return set(range(1, last + 1))
        return {round(1 + i * (last - 1) / (self.rows - 1)) for i in range(self.rows)}

    @torch.no_grad()
    def _take(self, epoch: int, pl_module: Any) -> None:
        images = pl_module.generate(self.samples, seed=SEED)
        low, high = (float(v) for v in pl_module.data_range)
        unit = ((images - low) / (high - low)).clamp(0, 1)
        self.frames[epoch] = (unit * 255).round().to(torch.uint8).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"frames": dict(self.frames)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        frames = state_dict.get("frames", {})
        self.frames = {int(k): v for k, v in frames.items() if isinstance(v, Tensor)}
