"""Interrupt and resume, and the damaged inputs a long-lived run directory meets (issue 7)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from nnlab.config import compose_config
from nnlab.train import RunInterrupted, train
from tests.helpers import all_runs, assert_clear_error, metrics_of, only_run

# Four batches per Lightning step, so an epoch has five steps to be interrupted between.
RUN = ["trainer.max_epochs=4", "trainer.enable_progress_bar=false", "trainer.steps_per_execution=4"]
COMPARED = ("train/loss", "train/lr", "val/loss", "val/acc", "test/loss", "test/acc", "epochs")


class CtrlC(pl.Callback):
    """Ctrl-C in the middle of an epoch (the third, by default)."""

    def __init__(self, epoch: int = 2, batch: int = 3) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("schedule", [[], ["scheduler=step", "scheduler.step_size=1"]])
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(nnlab, workdir, schedule):
    assert nnlab("train", *RUN, *schedule).exit_code == 0
    uninterrupted = metrics_of(all_runs(workdir)[0])

    cfg, choices = compose_config([*RUN, *schedule])
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg, choices, [*RUN, *schedule], callbacks=[CtrlC()])
    run = stopped.value.run_dir
    assert stopped.value.epochs_done == 2
    assert metrics_of(run)["status"] == "interrupted"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1

    before = metrics_of(run)["wall_time_s"]
    began = time.perf_counter()
    result = nnlab("train", "--resume", str(run))
    session = time.perf_counter() - began
    assert result.exit_code == 0, result.output
    resumed = metrics_of(run)
    assert resumed["status"] == "finished" and len(all_runs(workdir)) == 2  # no new directory
    assert {k: resumed[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}
    # the run's times hold both sessions: `nnlab runs` compares runs by them
    for key in ("wall_time_s", "fit_time_s"):
        assert 0 < resumed[key] - before < session, key


def test_resume_latest_with_more_epochs_continues_the_run(nnlab, workdir):
    assert (
        nnlab("train", "trainer.max_epochs=2", "trainer.enable_progress_bar=false").exit_code == 0
    )
    (run,) = all_runs(workdir)
    first = metrics_of(run)
    began = time.perf_counter()
    result = nnlab("train", "resume=latest", "trainer.max_epochs=3")
    session = time.perf_counter() - began
    assert result.exit_code == 0, result.output
    metrics = metrics_of(run)
    assert metrics["epochs"] == 3
    for key in ("wall_time_s", "fit_time_s"):
        assert 0 < metrics[key] - first[key] < session, key
    assert (
        "trainer.max_epochs=3" in yaml.safe_load((run / "overrides.yaml").read_text())["overrides"]
    )


def test_sigterm_keeps_last_ckpt_and_says_how_to_resume(workdir):
    command = [sys.executable, "-c", "from nnlab.cli import app; app()", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        # A one-second interval: the first last.ckpt, written mid-run, says training is under way.
        [
            *command,
            "trainer.max_epochs=500",
            "trainer.enable_progress_bar=false",
            "callbacks.checkpoint_interval_s=1",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(workdir.glob("outputs/runs/*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Interrupted" in stderr and "nnlab train --resume" in stderr
    assert "Traceback" not in stderr
    (run,) = all_runs(workdir)
    assert metrics_of(run)["status"] == "interrupted"
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_resume_bad_input(nnlab, workdir):
    assert_clear_error(nnlab("train", "--resume", "nope"), ["'nope' is not a run directory"])
    assert (
        nnlab("train", "trainer.max_epochs=1", "trainer.enable_progress_bar=false").exit_code == 0
    )
    (run,) = all_runs(workdir)
    assert_clear_error(nnlab("train", "-m", "--resume", "latest", "seed=1,2"), ["one run"])
    assert_clear_error(
        nnlab("train", "--resume", "latest", "model.hiden=3"), ["Unknown key 'model.hiden'"]
    )
    before = (run / "metrics.json").read_text()
    assert_clear_error(
        nnlab("train", "--resume", "latest"),
        ["trained 1 epochs and trainer.max_epochs=1", "trainer.max_epochs=2", "nnlab eval"],
    )
    assert (run / "metrics.json").read_text() == before, "the finished run is left as it was"
    (run / "checkpoints" / "last.ckpt").unlink()
    assert_clear_error(nnlab("train", "--resume", str(run)), ["no checkpoints/last.ckpt"])


def test_damaged_and_foreign_checkpoints_are_clear_errors(nnlab, workdir):
    assert (
        nnlab("train", "trainer.max_epochs=1", "trainer.enable_progress_bar=false").exit_code == 0
    )
    (run,) = all_runs(workdir)
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:1000])  # cut short, as by a full disk
    assert_clear_error(nnlab("eval", str(best)), ["Cannot read checkpoint", "damaged"])
    foreign = workdir / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert_clear_error(nnlab("eval", str(foreign)), ["not a Lightning checkpoint"])
    assert (run / "metrics.json").exists() and (run / "checkpoints" / "last.ckpt").exists()


def test_a_config_from_another_version(nnlab, workdir):
    assert (
        nnlab("train", "trainer.max_epochs=1", "trainer.enable_progress_bar=false").exit_code == 0
    )
    (run,) = all_runs(workdir)
    config = yaml.safe_load((run / "config.yaml").read_text())
    # keys added since a run was written take today's defaults: older runs still evaluate
    del config["eval_train"], config["model"]["engine"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert nnlab("eval", str(run)).exit_code == 0
    # a key this version does not know is a clear error naming both versions
    ckpt = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["nnlab"]["version"] = "9.0.0"
    torch.save(checkpoint, ckpt)
    config["model"]["attention_heads"] = 8
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert_clear_error(nnlab("eval", str(run)), ["nnlab 9.0.0", "attention_heads"])


def test_unwritable_output_dir_is_a_clear_error(nnlab, workdir):
    blocker = workdir / "not_a_dir"
    blocker.write_text("a file where the output directory should be\n")
    result = nnlab("train", f"output_dir={blocker}", "trainer.max_epochs=1")
    assert_clear_error(result, ["Cannot create a run directory", "output_dir="])
    assert blocker.read_text().startswith("a file")


def no_space(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_go_on(nnlab, workdir, monkeypatch):
    from lightning_fabric.plugins.io import torch_io

    real = torch_io._atomic_save

    def fills_up_in_epoch_three(checkpoint, path):
        if checkpoint["epoch"] < 2:
            return real(checkpoint, path)
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise no_space(path)

    monkeypatch.setattr(torch_io, "_atomic_save", fills_up_in_epoch_three)
    args = ["trainer.max_epochs=4", "trainer.enable_progress_bar=false"]
    result = nnlab("train", *args, "callbacks.checkpoint_interval_s=0")
    assert_clear_error(result, ["No space left on device", "nnlab train --resume"], exit_code=1)
    (run,) = all_runs(workdir)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert not list(run.rglob("*.tmp")), "no half-written file is left behind"
    assert metrics_of(run)["status"] == "failed"

    monkeypatch.undo()  # space freed
    assert nnlab("train", "--resume", str(run)).exit_code == 0
    assert metrics_of(run)["status"] == "finished" and metrics_of(run)["epochs"] == 4


def test_a_refused_write_outside_training_is_a_clear_error(nnlab, workdir, monkeypatch):
    assert (
        nnlab("train", "trainer.max_epochs=1", "trainer.enable_progress_bar=false").exit_code == 0
    )
    (run,) = all_runs(workdir)
    before = (run / "metrics.json").read_text()

    def disk_full(self, target):
        raise no_space(self)

    monkeypatch.setattr(Path, "replace", disk_full)  # how runs.write_json commits a file
    assert_clear_error(nnlab("eval", "latest"), ["No space left on device", "output_dir="], 1)
    assert not (run / "eval.json").exists() and not list(run.rglob("*.tmp"))
    assert (run / "metrics.json").read_text() == before


def test_resumed_detection_run_ends_like_an_uninterrupted_one(nnlab, workdir):
    from tests.test_detection_cli import TINY_MODEL, TINY_SHAPES

    run_args = [*TINY_MODEL, *TINY_SHAPES, "trainer.max_epochs=3"]
    assert nnlab("train", *run_args).exit_code == 0
    uninterrupted = metrics_of(all_runs(workdir)[0])
    cfg, choices = compose_config(run_args)
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg, choices, run_args, callbacks=[CtrlC(epoch=1, batch=1)])
    assert nnlab("train", "--resume", str(stopped.value.run_dir)).exit_code == 0
    resumed = metrics_of(stopped.value.run_dir)
    for key in ("train/loss", "val/map", "test/map", "test/map_50"):
        assert resumed[key] == uninterrupted[key], key


def test_last_ckpt_is_the_last_epoch_even_when_best_stopped_improving(nnlab, workdir):
    # An lr this small leaves val/acc where it was: only the first epoch is ever "best".
    args = ["optimizer.lr=1e-12", "trainer.max_epochs=3", "trainer.enable_progress_bar=false"]
    assert nnlab("train", *args).exit_code == 0
    (run,) = all_runs(workdir)
    best, last = (
        torch.load(run / "checkpoints" / name, weights_only=False)
        for name in ("best.ckpt", "last.ckpt")
    )
    assert (best["epoch"], last["epoch"]) == (0, 2)
    # best.ckpt is for evaluating (weights and config), last.ckpt for resuming (everything).
    assert "optimizer_states" not in best and "nnlab_rng" not in best and "nnlab" in best
    assert "optimizer_states" in last and "nnlab_rng" in last and "nnlab" in last


def test_last_checkpoint_is_the_last_epoch_when_validation_is_sparse(nnlab, workdir):
    """Validating every 3rd epoch of 4: last.ckpt must still hold epoch 4, not epoch 3."""
    from nnlab.restore import load_checkpoint

    sparse = ["trainer.check_val_every_n_epoch=3", "callbacks.checkpoint_interval_s=0"]
    result = nnlab("train", "trainer.max_epochs=4", "trainer.enable_progress_bar=false", *sparse)
    assert result.exit_code == 0, result.output
    last = load_checkpoint(only_run(workdir) / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 3  # Lightning's 0-based index of the fourth epoch
