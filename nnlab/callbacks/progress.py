"""The progress bar: Lightning's Rich bar, whose training row reads "Epoch 3/30", the last
finished epoch's training loss and the task's monitored metric, and the time left for the run."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar, Timer
from pytorch_lightning.callbacks.progress.rich_progress import (
    CustomTimeColumn,
    ProcessingSpeedColumn,
)
from rich.progress import ProgressColumn, Task, TextColumn
from rich.table import Column
from rich.text import Text

from nnlab import compat
from nnlab.runs import lower_is_better

STEP_LOSS = "train/loss_step"  # a point every N steps for TensorBoard, not an epoch's loss


def shown_value(name: str, value: float) -> str:
    """A loss (or error) to 4 significant digits (0.2820), a score (accuracy, mAP) to 4
    decimals (0.9815)."""
    return f"{value:#.4g}".rstrip(".") if lower_is_better(name) else f"{value:.4f}"


def epoch_metrics(metrics: dict[str, Any], monitor: str) -> str:
    """'loss 0.2345 · val/acc 0.9815' from a trainer's callback_metrics: the training loss (a
    GAN's two), then the monitored metric; empty before the first epoch ends."""
    parts = sorted(name for name in metrics if name.startswith("train/loss_") and name != STEP_LOSS)
    losses = ["train/loss"] if "train/loss" in metrics else parts
    names = [*losses, *([monitor] if monitor not in losses else [])]
    return " · ".join(
        f"{name.removeprefix('train/')} {shown_value(name, float(metrics[name]))}"
        for name in names
        if name in metrics
    )


def hms(seconds: float | None) -> str:
    """0:00:12, as Lightning's bar writes times; -:--:-- when unknown."""
    return "-:--:--" if seconds is None else str(timedelta(seconds=int(seconds)))


class RunClock:
    """A run's elapsed time and time left, from its epochs' start times. Every method takes
    `now` (time.monotonic()) so that the bar's drawing thread and the tests give their own."""

    def __init__(self) -> None:
        self.began: float | None = None
        self.ended: float | None = None
        self.epoch_began: float | None = None
        self.timed = (0, 0.0)  # finished epochs and their seconds: one tuple, read whole
        self.after = -1  # epochs still to come after the current one; -1: unknown

    def start(self, now: float) -> None:
        self.began, self.ended, self.epoch_began, self.timed = now, None, None, (0, 0.0)

    def epoch(self, number: int, last: int | None, now: float) -> None:
        """Epoch `number` (from 1) of `last` (None or -1: no limit) starts."""
        if self.epoch_began is not None:
            count, seconds = self.timed
            self.timed = (count + 1, seconds + now - self.epoch_began)
        self.epoch_began = now
        self.after = max(0, last - number) if last is not None and last > 0 else -1

    def end(self, now: float) -> None:
        self.ended = now

    def elapsed(self, now: float) -> float:
        return (self.ended or now) - (self.began or now)

    def left(self, epoch_left: float | None, now: float, budget: float | None) -> float | None:
        """Seconds until the run ends: what is left of this epoch, then the epochs after it at
        the mean epoch time so far, and no more than the time budget (trainer.max_time) leaves.
        `epoch_left` is Rich's estimate for this epoch's batches (None until it has a rate);
        it leaves out validation, so the mean, once known, bounds it from below. None when
        there is no estimate yet."""
        if self.ended is not None:
            return 0.0
        count, seconds = self.timed
        began = self.epoch_began
        if began is None:
            return budget
        if count:
            mean = seconds / count
            epoch_left = max(epoch_left or 0.0, mean - (now - began))
        elif epoch_left is not None:
            mean = now - began + epoch_left  # this epoch's own pace, until one has finished
        else:
            return budget
        left = None if self.after < 0 else epoch_left + self.after * mean
        return left if budget is None else budget if left is None else min(left, budget)


class _EpochColumn(TextColumn):
    """Lightning's description column; the training row counts epochs from 1."""

    def __init__(self, bar: ProgressBar) -> None:
        super().__init__("[progress.description]{task.description}")
        self.bar = bar

    def render(self, task: Task) -> Text:
        if task.id != self.bar.train_progress_bar_id or not self.bar.epoch_text:
            return super().render(task)
        return Text(self.bar.epoch_text, style=self.style)


class _RunTimeColumn(CustomTimeColumn):
    """Lightning's 'elapsed • remaining' for one epoch; on the training row, for the whole run."""

    def __init__(self, bar: ProgressBar, style: Any) -> None:
        super().__init__(style)
        self.bar = bar

    def get_table_column(self) -> Column:
        return Column(no_wrap=True)  # one line, at any terminal width

    def render(self, task: Task) -> Text:
        clock = self.bar.clock
        if task.id != self.bar.train_progress_bar_id or clock.began is None:
            return super().render(task)
        now = time.monotonic()
        timer = self.bar.timer
        left = clock.left(task.time_remaining, now, timer.time_remaining() if timer else None)
        return Text(f"{hms(clock.elapsed(now))} • {hms(left)} left", style=self.style)


class _MetricsColumn(ProgressColumn):
    """The last finished epoch's loss and monitored metric, a string made once an epoch."""

    def __init__(self, bar: ProgressBar, style: Any) -> None:
        # last on the line: on a narrow terminal it is cut short (…) rather than wrapped
        super().__init__(Column(no_wrap=True, overflow="ellipsis"))
        self.bar, self.style = bar, style

    def render(self, task: Task) -> Text:
        text = self.bar.metrics_text if task.id == self.bar.train_progress_bar_id else ""
        return Text(f"· {text}" if text else "", style=self.style)


class ProgressBar(RichProgressBar):
    """Lightning's Rich bar, redrawn at most 10 times a second: Lightning's default of 100, from
    a thread that competes with training, cost 40% of a small model's epoch
    (tests/perf/bench_overhead.py). The metrics are read once an epoch, not at every step as
    Lightning's bar does: the task logs its epoch's loss after the callbacks' on_train_epoch_end,
    so they are read when the next epoch starts and when training ends. Without the it/s column
    when `speed` is False (several batches a step, nnlab's steps_per_execution): that rate
    would not be batches per second, and reads 0.00 when an epoch is a single step."""

    def __init__(self, monitor: str, speed: bool = True) -> None:
        super().__init__(refresh_rate=10)
        self.monitor, self.speed = monitor, speed
        self.epoch_text = ""
        self.metrics_text = ""
        self.clock = RunClock()
        self.timer: Timer | None = None  # trainer.max_time's

    def configure_columns(self, trainer: pl.Trainer) -> list:
        columns = super().configure_columns(trainer)
        # Distributed runs take one batch per step (TensorBatches), so their rate is right.
        grouped = not self.speed and trainer.world_size == 1
        mine: list[ProgressColumn] = []
        for column in columns:
            if isinstance(column, TextColumn):
                mine.append(_EpochColumn(self))
            elif isinstance(column, CustomTimeColumn):
                mine.append(_RunTimeColumn(self, column.style))
            elif not (grouped and isinstance(column, ProcessingSpeedColumn)):
                mine.append(column)
        return [*mine, _MetricsColumn(self, self.theme.metrics)]

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        # Lightning's own metrics column, drawn after ours, stays empty: _MetricsColumn shows
        # the epoch's metrics, which Lightning would gather at every step.
        return {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Rich draws the whole bar at once whenever a bar is added or reset, twice per
        # epoch: 5% of a small model's epoch. The bar's thread redraws it within
        # 1/refresh_rate s, and the final frame is drawn when the bar stops.
        if self.progress is not None:
            compat.defer_rich_redraws(self.progress)
        self.clock.start(time.monotonic())
        self.timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_enabled:  # only the first process of a distributed run draws
            number, last = trainer.current_epoch + 1, trainer.max_epochs
            self.clock.epoch(number, last, time.monotonic())
            self.epoch_text = epoch_text(number, last)
            self.metrics_text = epoch_metrics(trainer.callback_metrics, self.monitor)
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_enabled:
            self.clock.end(time.monotonic())
            self.metrics_text = epoch_metrics(trainer.callback_metrics, self.monitor)
            self.refresh()


def epoch_text(number: int, last: int | None) -> str:
    """'Epoch 3/30', as wide as 'Epoch 30/30' so the bar does not shift; 'Epoch 3' without a
    limit."""
    if last is None or last <= 0:
        return f"Epoch {number}"
    return f"{f'Epoch {number}/{last}':<{len(f'Epoch {last}/{last}')}}"
