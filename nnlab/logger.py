"""The TensorBoard logger runs write to."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger

FLUSH_S = 5.0  # how often TensorBoard reloads a run by default: a viewer waits no longer


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
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, flush_secs=FLUSH_S, **kwargs)
        self._saved_at = time.monotonic()
        self.steps: Callable[[], int] | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step if self.steps is None else self.steps())

    def save(self) -> None:
        if time.monotonic() - self._saved_at >= FLUSH_S:
            super().save()
            self._saved_at = time.monotonic()

    def finalize(self, status: str) -> None:
        self._saved_at = -math.inf  # the last save writes hparams.yaml: never skip it
        super().finalize(status)
