"""The TensorBoard logger runs write to."""

from __future__ import annotations

import math
import time
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger

FLUSH_S = 5.0  # how often TensorBoard reloads a run by default: a viewer waits no longer


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoard logger, saved at most every FLUSH_S seconds.

    Lightning saves a logger after every metrics write, twice per epoch, and each save waits for
    the event writer's thread to write out everything queued: about 1% of a small model's epoch
    (tests/perf/bench_overhead.py). Between saves that thread writes events as they come and
    flushes every FLUSH_S seconds, and Lightning saves and closes the logger whenever training
    ends, however it ends.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, flush_secs=FLUSH_S, **kwargs)
        self._saved_at = time.monotonic()

    def save(self) -> None:
        if time.monotonic() - self._saved_at >= FLUSH_S:
            super().save()
            self._saved_at = time.monotonic()

    def finalize(self, status: str) -> None:
        self._saved_at = -math.inf  # the last save writes hparams.yaml: never skip it
        super().finalize(status)
