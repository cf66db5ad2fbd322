"""The TensorBoard logger runs write to."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor
from torch.utils.tensorboard.writer import FileWriter

from nnlab import compat, hparams

FLUSH_S = 5.0  # how often TensorBoard reloads a run by default: a viewer waits no longer


def write_scalars(experiment: Any, values: Mapping[str, float], step: int) -> None:
    """Writes the values as one TensorBoard event (a SummaryWriter's add_scalar writes one event
    each). Without TensorFlow installed, TensorBoard's writer opens, appends to and closes its
    file for every event, from a thread that shares the interpreter with training. Over no
    logger, an event per value cost 1.3 ms of a 28 ms epoch (tests/perf/bench_overhead.py's MLP
    at batch 256), three events an epoch instead of eight 0.8 ms."""
    writer = compat.file_writer(experiment)
    if writer is None:  # no private writer to reach: the public way, an event per value
        for tag, value in values.items():
            experiment.add_scalar(tag, value, step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    summary = Summary(
        value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]
    )
    writer.add_summary(summary, step)  # as add_scalar does


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoard logger, saved at most every FLUSH_S seconds, whose x-axis is
    optimizer steps.

    Lightning plots epoch metrics against its own step count, and one Lightning step of an
    nnlab task can hold several batches (trainer.steps_per_execution). train() sets `steps`
    to the trainer's optimizer-step count, the axis the gradient-flow samples use too.

    Lightning saves a logger after every metrics write, twice per epoch, and each save waits for
    the event writer's thread to write out everything queued: about 1% of a small model's epoch
    (tests/perf/bench_overhead.py). Between saves that thread writes events as they come and
    flushes every FLUSH_S seconds, and Lightning saves and closes the logger whenever training
    ends, however it ends.

    Lightning's `epoch` counter is left out: the axis is steps, and its chart would open the
    board. The run's HParams session (nnlab/hparams.py) is opened and closed here.
    """

    def __init__(self, *args: Any, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(*args, prefix=prefix, flush_secs=FLUSH_S, **kwargs)
        self.metric_prefix = prefix  # Lightning keeps it only under a private name
        self._saved_at = time.monotonic()
        self.steps: Callable[[], int] | None = None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = step if self.steps is None else self.steps()
        if self.metric_prefix:  # nnlab sets none; Lightning's own path knows how to add one
            super().log_metrics(metrics, step)
            return
        scalars, others = {}, {}
        for name, value in metrics.items():
            if name == "epoch":
                continue
            if isinstance(value, Tensor) and value.numel() == 1:
                value = value.item()
            (scalars if isinstance(value, int | float) else others)[name] = value
        if scalars:
            write_scalars(self.experiment, scalars, step)
        if others:  # dicts (add_scalars), and Lightning's error for anything else
            super().log_metrics(others, step)

    def save(self) -> None:
        if time.monotonic() - self._saved_at >= FLUSH_S:
            super().save()
            self._saved_at = time.monotonic()

    def finalize(self, status: str) -> None:
        self._saved_at = -math.inf  # the last save writes hparams.yaml: never skip it
        super().finalize(status)

    @rank_zero_only
    def log_points(self, tag: str, points: Iterable[tuple[int, float]]) -> None:
        """Values of one tag at steps of their own (a training loss sampled every N steps)."""
        for step, value in points:
            write_scalars(self.experiment, {tag: value}, step)

    @rank_zero_only
    def open_session(
        self,
        root: Path,
        config: Mapping[str, Any],
        choices: Mapping[str, str],
        overrides: list[str],
    ) -> None:
        """A new run's config (TensorBoard's text view, and hparams.yaml) and its HParams
        session, whose settings join the experiment of everything under `root`."""
        self.log_hyperparams(dict(config))  # hparams.yaml only: with no metrics, no event
        self.experiment.add_text("config", hparams.config_text(config, overrides), 0)
        values = hparams.session_values(config, choices)
        label = hparams.session_label(Path(self.save_dir), root)
        self._write_raw(hparams.start_summary(values, label))
        hparams.update_experiment(
            root, values, chosen=hparams.chosen(overrides, values), groups=choices
        )

    @rank_zero_only
    def close_session(self, root: Path, status: str, metrics: Mapping[str, float]) -> None:
        """The session's end: its status, and the final metrics (in the `final` sub-run, which
        HParams reads them from) with their names added to the experiment."""
        if metrics:
            step = self.steps() if self.steps is not None else 0
            hparams.write_final(Path(self.log_dir) / hparams.FINAL, metrics, step)
            hparams.update_experiment(root, metrics=metrics)
        end = hparams.end_summary(status)
        if end is not None:
            self._write_raw(end)

    def _write_raw(self, summary: Any) -> None:
        """A summary into this run's own event file, written out now. One writer per run:
        TensorBoard's Python loader reads only a run's newest file."""
        writer = compat.file_writer(self.experiment)
        if writer is None:  # no private writer to reach: a file of its own (see compat)
            writer = FileWriter(self.log_dir)
        writer.add_summary(summary)
        writer.flush()
