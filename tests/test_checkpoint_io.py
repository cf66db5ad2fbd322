"""Checkpoint files written at most every callbacks.checkpoint_interval_s, always at the end."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint

from nnlab.callbacks.checkpoint import ModelCheckpoint
from nnlab.checkpoint_io import DeferredCheckpointIO, snapshot
from nnlab.config import compose_config
from nnlab.train import RunInterrupted, TrainingError, train

RUN = ["trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger=none"]


def test_snapshot_is_a_cpu_copy_training_cannot_change():
    weights = OrderedDict(w=torch.ones(3))
    weights._metadata = {"": {"version": 1}}
    scores = {"best": torch.tensor(0.5)}
    checkpoint = {"state_dict": weights, "callbacks": [scores, (torch.zeros(2), 7)], "epoch": 4}
    copy = snapshot(checkpoint)
    weights["w"].add_(1)
    scores["best"] = torch.tensor(0.9)
    checkpoint["callbacks"][1][0].fill_(3)
    assert copy["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert copy["callbacks"][0]["best"].item() == 0.5
    assert copy["callbacks"][1][0].tolist() == [0.0, 0.0] and copy["callbacks"][1][1] == 7
    assert type(copy["state_dict"]) is OrderedDict and copy["state_dict"]._metadata == {
        "": {"version": 1}
    }


class OnDisk(pl.Callback):
    """The checkpoint files on disk as each epoch starts: {epoch: {name: saved epoch}}."""

    def __init__(self, fail_in: int | None = None, error: type[BaseException] = RuntimeError):
        self.seen: dict[int, dict[str, int]] = {}
        self.fail_in, self.error = fail_in, error

    def on_train_epoch_start(self, trainer, pl_module):
        folder = Path(trainer.checkpoint_callback.dirpath)
        self.seen[trainer.current_epoch] = {
            path.name: torch.load(path, weights_only=False)["epoch"]
            for path in sorted(folder.glob("*.ckpt"))
        }
        if trainer.current_epoch == self.fail_in:
            raise self.error("stopped by the test")


def saved_epochs(run_dir):
    folder = run_dir / "checkpoints"
    return {p.name: torch.load(p, weights_only=False)["epoch"] for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    ("interval", "on_disk_at_epoch_2"), [(0, {"best.ckpt", "last.ckpt"}), (3600, set())]
)
def test_files_wait_for_the_interval_and_are_always_written_at_the_end(
    workdir, interval, on_disk_at_epoch_2
):
    overrides = [*RUN, f"callbacks.checkpoint_interval_s={interval}"]
    cfg, choices = compose_config(overrides)
    watch = OnDisk()
    result = train(cfg, choices, overrides, callbacks=[watch])
    assert set(watch.seen[2]) == on_disk_at_epoch_2
    if interval == 0:
        assert watch.seen[2]["last.ckpt"] == 1, "every epoch's end at once"
    assert saved_epochs(result.run_dir)["last.ckpt"] == 2


@pytest.mark.parametrize(
    ("error", "raised"), [(KeyboardInterrupt, RunInterrupted), (RuntimeError, TrainingError)]
)
def test_an_interrupted_or_failed_run_writes_its_last_complete_epoch(workdir, error, raised):
    overrides = [*RUN, "callbacks.checkpoint_interval_s=3600"]
    cfg, choices = compose_config(overrides)
    with pytest.raises(raised) as stopped:
        train(cfg, choices, overrides, callbacks=[OnDisk(fail_in=2, error=error)])
    assert "last.ckpt" in saved_epochs(stopped.value.run_dir)
    assert saved_epochs(stopped.value.run_dir)["last.ckpt"] == 1, "epochs 0 and 1 completed"


def test_one_steps_checkpoints_are_written_together(tmp_path):
    io = DeferredCheckpointIO(interval_s=0.2)
    io.save_checkpoint({"global_step": 5, "w": torch.ones(1)}, tmp_path / "last.ckpt")
    assert not (tmp_path / "last.ckpt").exists(), "within the interval: held in memory"
    time.sleep(0.25)
    io.save_checkpoint({"global_step": 6, "w": torch.ones(1)}, tmp_path / "best.ckpt")
    io.save_checkpoint({"global_step": 6, "w": torch.ones(1)}, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt")["global_step"] == 6, "written with best.ckpt"
    io.save_checkpoint({"global_step": 7, "w": torch.ones(1)}, tmp_path / "last.ckpt")
    io.teardown()
    assert torch.load(tmp_path / "last.ckpt")["global_step"] == 7


@pytest.mark.parametrize("args", [{}, {"monitor": "val/acc", "mode": "max"}])
def test_checkpoint_callbacks_keep_lightnings_state_keys(args):
    """Checkpoints file each callback's state under its key: last.ckpt files written with
    Lightning's ModelCheckpoint or nnlab's resume with the other, best score included."""
    ours = ModelCheckpoint(**args)
    assert ours.state_key == LightningModelCheckpoint(**args).state_key
    assert ours.state_key is ours.state_key, "built once"


@pytest.mark.parametrize(
    "metrics",
    [
        {"val/acc": torch.tensor(0.75), "train/loss": torch.tensor(0.3)},
        {"val/acc": torch.tensor(0.75), "epoch": torch.tensor(4.0), "step": torch.tensor(90.0)},
        {"val/acc": torch.tensor(0.75), "note": [1.0, 2.0]},
    ],
)
def test_checkpoint_candidates_equal_lightnings_as_independent_copies(metrics):
    """best.ckpt is picked, and checkpoint names filled, from these candidates: nnlab's cheap
    copy must give Lightning's values and must not share a tensor with the logged metrics."""
    # Only the trainer's metrics, epoch and step are read.
    fake = type("T", (), {"callback_metrics": metrics, "current_epoch": 3, "global_step": 57})()
    ours = ModelCheckpoint()._monitor_candidates(fake)  # type: ignore[arg-type]
    theirs = LightningModelCheckpoint()._monitor_candidates(fake)  # type: ignore[arg-type]
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert ours[name].dtype == value.dtype and torch.equal(ours[name], value), name
        else:
            assert ours[name] == value, name
    for name, value in metrics.items():
        assert ours[name] is not value, name
