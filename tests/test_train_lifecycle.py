"""train()'s lifecycle as metrics.json records it: every way a run ends leaves a final status."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from nnlab.config import compose_config
from nnlab.errors import UserError
from nnlab.train import train
from tests.helpers import all_runs, metrics_of


class RefusesInput(pl.Callback):
    """Bad input found mid-training: an image refused in the second epoch, say."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise UserError("data/bad.png is 20000 × 20000 pixels")


def test_bad_input_found_mid_training_ends_the_run_as_failed(workdir):
    cfg, choices = compose_config(["trainer.max_epochs=3", "trainer.enable_progress_bar=false"])
    with pytest.raises(UserError, match="bad.png"):
        train(cfg, choices, [], callbacks=[RefusesInput()])
    (run,) = all_runs(workdir)
    metrics = metrics_of(run)
    assert metrics["status"] == "failed", "not left as running"
    assert "bad.png" in metrics["error"]
