"""Notes whether this process was told to stop while it trained."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import pytorch_lightning as pl

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals(pl.Callback):
    """Sets `received` when Ctrl-C (SIGINT) or SIGTERM reaches this process during training,
    before Lightning's own handling runs.

    A cluster's time limit, and Ctrl-C in a terminal, signal every process of a distributed run
    at once, and a process whose peers have already stopped sees its next collective fail with a
    connection error: part of the stop, not a failure of its own. Wrapped on train start, after
    Lightning installs its handlers; Lightning restores SIGTERM's after the fit, and train()
    SIGINT's.
    """

    def __init__(self) -> None:
        self.received = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if callable(previous):  # a default or ignored signal keeps its behaviour
                signal.signal(signum, self._noting(previous))

    def _noting(self, previous: signal.Handlers) -> signal.Handlers:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.received = True
            previous(signum, frame)

        return handler
