"""The progress bar (issue 23): epochs counted from 1, the last finished epoch's training loss and
the task's monitored metric, the time left for the run; and trainer=gpu on a machine without a
GPU said in one sentence."""

from __future__ import annotations

import csv
import re

import pytest
import torch

from nnlab.callbacks.progress import RunClock, epoch_metrics, epoch_text, hms, shown_value
from tests.helpers import assert_clear_error, only_run

TINY_RNN = ["model=rnn", "model.layers=1", "data=adding", "data.length=12", "data.samples=400"]


def train_with_bar(nnlab, workdir, monkeypatch, *overrides: str) -> tuple[str, dict[str, str]]:
    """The final frame of the training bar (the line that starts 'Epoch'), and the last row of
    the run's metrics.csv. Off a terminal Rich prints each bar's final frame once, when it
    stops; COLUMNS keeps the line whole."""
    monkeypatch.setenv("COLUMNS", "250")
    result = nnlab("train", "logger=none", "eval_train=false", *overrides)
    assert result.exit_code == 0, result.output
    frames = [line for line in result.output.splitlines() if line.startswith("Epoch ")]
    assert len(frames) == 1, result.output
    with (only_run(workdir) / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return frames[0], rows[-1]


def shown(frame: str, name: str) -> str:
    found = re.search(rf"(?:^|\s){re.escape(name)} (\S+)", frame)
    assert found, (name, frame)
    return found.group(1)


def test_the_bar_shows_epoch_n_of_n_the_last_loss_and_val_acc(nnlab, workdir, monkeypatch):
    frame, last = train_with_bar(nnlab, workdir, monkeypatch, "trainer.max_epochs=2")
    assert frame.startswith("Epoch 2/2 "), frame  # Lightning's own bar said "Epoch 1/1"
    assert last["epoch"] == "2"
    loss, acc = shown(frame, "loss"), shown(frame, "val/acc")
    # the second epoch's values (not the first's), a loss to 4 significant digits, an
    # accuracy to 4 decimals
    assert float(loss) == pytest.approx(float(last["train/loss"]), rel=1e-3)
    assert len(loss.replace(".", "").lstrip("0")) == 4, loss
    assert re.fullmatch(r"[01]\.\d{4}", acc) and float(acc) == pytest.approx(
        float(last["val/acc"]), abs=1e-4
    )
    assert "0:00:00 left" in frame, "a finished run has no time left"


def test_the_first_epoch_is_1_and_a_regression_shows_its_val_loss(nnlab, workdir, monkeypatch):
    frame, last = train_with_bar(nnlab, workdir, monkeypatch, *TINY_RNN, "trainer.max_epochs=1")
    assert frame.startswith("Epoch 1/1 "), frame
    assert float(shown(frame, "val/loss")) == pytest.approx(float(last["val/loss"]), rel=1e-3)
    assert "val/acc" not in frame


def test_the_bar_shows_the_metric_the_user_monitors(nnlab, workdir, monkeypatch):
    overrides = ["trainer.max_epochs=1", "callbacks.monitor=val/loss"]
    frame, last = train_with_bar(nnlab, workdir, monkeypatch, *overrides)
    assert float(shown(frame, "val/loss")) == pytest.approx(float(last["val/loss"]), rel=1e-3)
    assert "val/acc" not in frame


def test_lightnings_columns_are_the_ones_the_bar_replaces():
    """The bar swaps Lightning's description and time columns for its own: were Lightning to
    draw them with other classes, the bar would silently show Lightning's again."""
    from types import SimpleNamespace

    from pytorch_lightning.callbacks.progress.rich_progress import CustomTimeColumn
    from rich.progress import TextColumn

    from nnlab.callbacks.progress import ProgressBar

    bar = ProgressBar("val/acc", speed=False)
    theirs = super(ProgressBar, bar).configure_columns(SimpleNamespace(world_size=1))
    assert {TextColumn, CustomTimeColumn} <= {type(column) for column in theirs}
    ours = bar.configure_columns(SimpleNamespace(world_size=1))
    assert not {TextColumn, CustomTimeColumn} & {type(column) for column in ours}
    assert "ProcessingSpeedColumn" not in {type(column).__name__ for column in ours}


def test_epochs_are_numbered_from_1_at_a_steady_width():
    assert epoch_text(1, 30) == "Epoch 1/30 " and epoch_text(30, 30) == "Epoch 30/30"
    assert epoch_text(4, -1) == "Epoch 4"


def test_numbers_are_shown_as_the_issue_asks():
    assert shown_value("train/loss", 0.282) == "0.2820"
    assert shown_value("train/loss", 1234.56) == "1235"
    assert shown_value("val/acc", 0.98153) == "0.9815"
    assert shown_value("val/map_50", 0.5) == "0.5000"
    assert hms(12.7) == "0:00:12" and hms(3725) == "1:02:05" and hms(None) == "-:--:--"


def test_the_metrics_are_the_training_losses_then_the_monitor():
    gan = {"train/loss_g": torch.tensor(1.5), "train/loss_d": 0.25, "val/sample_score": 0.75}
    assert epoch_metrics(gan, "val/sample_score") == (
        "loss_d 0.2500 · loss_g 1.500 · val/sample_score 0.7500"
    )
    supervised = {"train/loss": 0.5, "train/loss_step": 9.0, "train/acc": 0.9, "val/acc": 0.8}
    assert epoch_metrics(supervised, "val/acc") == "loss 0.5000 · val/acc 0.8000"
    assert epoch_metrics(supervised, "train/loss") == "loss 0.5000", "not shown twice"
    assert epoch_metrics({}, "val/acc") == "", "nothing before the first epoch ends"


def test_time_left_is_the_epochs_to_come_at_the_mean_epoch_time():
    clock = RunClock()
    clock.start(100.0)
    assert clock.left(None, 100.0, None) is None, "no estimate before there is a rate"
    clock.epoch(1, 5, 100.0)
    assert clock.left(None, 101.0, None) is None
    # within the first epoch, its own pace: 1 s gone and Rich's 2 s to go, so 3 s an epoch
    assert clock.left(2.0, 101.0, None) == pytest.approx(2.0 + 4 * 3.0)
    clock.epoch(2, 5, 104.0)  # the first epoch took 4 s
    assert clock.left(None, 105.0, None) == pytest.approx(3.0 + 3 * 4.0)
    assert clock.left(3.5, 105.0, None) == pytest.approx(3.5 + 3 * 4.0)
    clock.epoch(3, 5, 106.0)  # then 2 s: a mean of 3 s
    assert clock.left(None, 110.0, None) == pytest.approx(0.0 + 2 * 3.0), "slower than the mean"
    assert clock.left(None, 106.0, 4.0) == pytest.approx(4.0), "trainer.max_time ends it sooner"
    assert clock.elapsed(110.0) == pytest.approx(10.0)
    clock.end(111.0)
    assert clock.left(None, 120.0, None) == 0.0 and clock.elapsed(120.0) == pytest.approx(11.0)


def test_without_an_epoch_limit_only_the_time_budget_bounds_the_run():
    clock = RunClock()
    clock.start(0.0)
    clock.epoch(1, -1, 0.0)
    clock.epoch(2, -1, 2.0)
    assert clock.left(None, 2.5, None) is None
    assert clock.left(None, 2.5, 60.0) == pytest.approx(60.0)


# -- trainer=gpu without a GPU ------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("override", ["trainer=gpu", "trainer.accelerator=cuda"])
def test_a_gpu_asked_for_without_one_is_one_sentence(nnlab, workdir, override):
    result = nnlab("train", override, "trainer.enable_progress_bar=false", "logger=none")
    setting = override.replace("trainer=gpu", "trainer.accelerator=gpu")
    expected = [setting, "torch finds no GPU on this machine", "trainer=default"]
    assert_clear_error(result, [*expected, "trainer.accelerator=cpu"])
    assert "Misconfiguration" not in result.output
    assert not list((workdir / "outputs" / "runs").glob("*")), "no run directory is left"
