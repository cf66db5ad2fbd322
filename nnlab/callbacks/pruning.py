"""Reports a sweep trial's metric to Optuna after every validation and stops hopeless trials."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


class PruningCallback(pl.Callback):
    """Optuna pruning for one trial, written for `pytorch_lightning` (optuna-integration's
    callback imports the `lightning` namespace, which does not mix with it: Optuna #4689).

    A pruned trial is stopped like early stopping (trainer.should_stop) rather than by raising
    inside the loop, so its run directory still ends with checkpoints and metrics.
    """

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        self.trial.report(value, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True
