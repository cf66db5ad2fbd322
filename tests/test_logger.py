"""TensorBoard events reach the file while a run trains, not only when it ends."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nnlab import logger
from nnlab.config import compose_config
from nnlab.train import train


class Viewer(pl.Callback):
    """Reads the run's event file as epoch 3 starts, as a TensorBoard open on the run would."""

    def __init__(self) -> None:
        self.steps: dict[str, list[int]] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 3:
            time.sleep(2 * logger.FLUSH_S)
            events = EventAccumulator(trainer.logger.log_dir)
            events.Reload()
            self.steps = {
                tag: [event.step for event in events.Scalars(tag)]
                for tag in ("train/loss", "val/acc", "train/lr")
            }


def test_tensorboard_shows_each_epoch_within_the_flush_interval(workdir, monkeypatch):
    monkeypatch.setattr(logger, "FLUSH_S", 0.1)
    overrides = ["trainer.max_epochs=4", "trainer.enable_progress_bar=false"]
    cfg, choices = compose_config(overrides)
    viewer = Viewer()
    train(cfg, choices, overrides, callbacks=[viewer])
    # One Lightning step holds the epoch's 20 batches: the x-axis counts optimizer steps.
    expected = [20, 40, 60]
    assert viewer.steps == dict.fromkeys(("train/loss", "val/acc", "train/lr"), expected), (
        "epochs 0-2, at their optimizer steps"
    )


def test_one_event_holds_every_scalar_and_other_values_take_lightnings_path(tmp_path):
    import torch

    tb = logger.TensorBoard(save_dir=str(tmp_path), name="tb", version="")
    tb.log_metrics({"train/loss": torch.tensor(0.25), "epoch": 2, "val/acc": 0.5}, step=40)
    tb.log_metrics({"pair": {"a": 1.0, "b": 2.0}}, step=40)  # add_scalars: a run per key
    tb.finalize("success")
    events = EventAccumulator(tb.log_dir)
    events.Reload()
    assert {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    } == {"train/loss": [(40, 0.25)], "val/acc": [(40, 0.5)]}, "no epoch chart: the axis is steps"
    assert sorted(p.name for p in (tmp_path / "tb").iterdir() if p.is_dir()) == ["pair_a", "pair_b"]


def test_the_step_loss_is_logged_every_n_steps_as_configured(nnlab, workdir):
    from tests.helpers import QUICK, only_run

    # batches of 16: 79 optimizer steps an epoch, 158 in two
    args = [*QUICK, "data.batch_size=16", "trainer.log_every_n_steps=20"]
    assert nnlab("train", *args).exit_code == 0
    events = EventAccumulator(str(only_run(workdir) / "tb"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss_step")]
    assert steps == list(range(20, 158, 20))
