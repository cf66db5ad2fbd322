"""Stamp the resolved config into every checkpoint, so a lone .ckpt can rebuild its model."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

KEY = "nnlab"


class ConfigStamp(pl.Callback):
    def __init__(self, config: dict[str, Any], version: str) -> None:
        self.config = config
        self.version = version

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[KEY] = {"config": self.config, "version": self.version}
