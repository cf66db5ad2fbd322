"""A run's log.txt: what the libraries under nnlab warn and log, kept off the terminal.

Lightning, torch, Optuna and TensorBoard speak about their own workings ("Initializing
distributed", "No CUDA runtime is found", experimental features...): nothing a user of nnlab can
act on. While a command works on a run, `captured()` collects every library log record (from
the handlers that would print it) and every Python warning; only nnlab's own notices
(nnlab.errors.Notice) and the few library warnings in ACTIONABLE still reach the terminal.

What was collected is appended to the run's log.txt as the command ends, with the time, level,
source and process of each line. A command that refuses its input (UserError) writes nothing:
a refused command leaves a run's files as they were. A command that crashed before it had a
run directory prints them after all, beside its traceback, where they may tell why.

Torch-free: commands open a capture before they load torch.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from nnlab import runs
from nnlab.console import warn_plainly
from nnlab.errors import Notice, UserError

# Library warnings about the user's own settings: shown, in nnlab's words (and logged as said).
ACTIONABLE = (
    (
        re.compile(r"precision='16-mixed'.*AMP with fp16 is not supported on CPU"),
        "trainer.precision=16-mixed: there is no fp16 mixed precision on a CPU, so the run "
        "trains in bf16-mixed. Say so with trainer.precision=bf16-mixed, or choose 32-true.",
    ),
)
KEPT = 2000  # lines one capture keeps; past that a flood is counted, not kept
FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d]: %(message)s"


class Capture:
    """The lines one command collected, and the directory whose log.txt they go to."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.ready: Callable[[], bool] = lambda: True  # whether the directory may be written
        self.lines: list[str] = []
        self.dropped = 0
        self.pid = os.getpid()

    @property
    def destination(self) -> Path | None:
        return self.directory if self.directory is not None and self.ready() else None

    def add(self, line: str) -> None:
        if os.getpid() != self.pid:
            # a forked child (a DataLoader worker) ends without closing the capture: its lines
            # are appended as they come
            self._append(f"{line}\n")
        elif len(self.lines) < KEPT:
            self.lines.append(line)
        else:
            self.dropped += 1

    def text(self) -> str:
        more = [f"... and {self.dropped} more lines, not kept"] if self.dropped else []
        return "".join(f"{line}\n" for line in [*self.lines, *more])

    def write(self) -> None:
        if self.lines:
            self._append(self.text())

    def _append(self, text: str) -> None:
        """Append to <directory>/log.txt. Never through a link (a run from elsewhere could plant
        one), and never failing the command: a log is a diagnostic."""
        destination = self.destination
        if destination is None:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        with suppress(OSError):
            descriptor = os.open(destination / runs.LOG, flags, 0o644)
            with open(descriptor, "a", encoding="utf-8") as log:
                log.write(text)


class _Collector(logging.Handler):
    """Formats records into a Capture instead of onto a stream."""

    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self.capture = capture
        self.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.capture.add(self.format(record))
        except Exception:
            self.handleError(record)


_active: list[Capture] = []  # the captures open in this process, innermost last


def keep_in(directory: Path, ready: Callable[[], bool] = lambda: True) -> None:
    """The innermost open capture's lines go to <directory>/log.txt, if `ready()` says so as it
    ends. train() learns its run directory only after it has built the data and the model, and
    a resumed run's files may change only once its training has started."""
    if _active:
        _active[-1].directory, _active[-1].ready = Path(directory), ready


@contextmanager
def captured(directory: Path | None = None) -> Iterator[Capture]:
    """Library log records and warnings kept off the terminal for the block (see the module's
    docstring); for <directory>/log.txt, or the directory keep_in() names later. Nests: an
    inner capture takes the lines over until it ends. Also a decorator: @captured()."""
    capture = Capture(directory)
    collector = _Collector(capture)
    swapped = _swap_handlers(collector)
    shown = warnings.showwarning
    warnings.showwarning = _shower(collector, shown)
    _active.append(capture)
    refused = crashed = False
    try:
        yield capture
    except UserError:
        refused = True
        raise
    except Exception:
        crashed = True
        raise
    finally:
        _active.remove(capture)
        warnings.showwarning = shown
        for logger, handlers in swapped:
            logger.handlers = handlers
        if not refused:
            capture.write()
            if crashed and capture.destination is None and capture.lines:
                sys.stderr.write(capture.text())


def _to_terminal(handler: logging.Handler) -> bool:
    """A handler that writes to a stream (Lightning's, torch's own kind, a notebook's
    basicConfig), or an outer capture, which this one replaces while it is open. File handlers
    stay, and so do handlers without a stream yet (torch's trace log, off unless TORCH_TRACE)."""
    if isinstance(handler, _Collector):
        return True
    stream = getattr(handler, "stream", None)
    return stream is not None and not isinstance(handler, logging.FileHandler)


def _swap_handlers(collector: _Collector) -> list[tuple[logging.Logger, list[logging.Handler]]]:
    """Every library logger's stream handlers replaced by the collector; returns the loggers and
    their handlers as they were. The root logger gets it too: a record that reaches it without
    a handler would otherwise go to Python's last-resort handler, stderr."""
    loggers = [logging.getLogger()] + [
        logger
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.split(".")[0] != "nnlab"
    ]
    swapped = []
    for logger in loggers:
        streams = [h for h in logger.handlers if _to_terminal(h)]
        if streams or logger is loggers[0]:
            swapped.append((logger, list(logger.handlers)))
            kept = [h for h in logger.handlers if h not in streams]
            logger.handlers = [*kept, collector]
    return swapped


def _shower(collector: _Collector, shown: Callable[..., None]) -> Callable[..., None]:
    """A warnings.showwarning that passes nnlab's notices on to `shown`, logs everything else,
    and also shows the ACTIONABLE library warnings plainly."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, Notice):
            shown(message, category, filename, lineno, file, line)
            return
        said = f"{category.__name__}: {message} ({filename}:{lineno})"
        collector.handle(
            logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, said, None, None)
        )
        for pattern, advice in ACTIONABLE:
            if pattern.search(str(message)):
                warn_plainly(advice)

    return show
