"""Run one path in a child process forked from the driver, its output in a log file.

The driver imports torch, Lightning and nnlab once, then forks a child per path: a fresh
interpreter would pay those imports (~5 s on 2 cores) on every one of the matrix's paths. A
child still isolates what one path does from the next: a CUDA error that spoils its context,
torch.compile's caches, the process-wide flags nnlab's trainer sets, a hang (killed at the
timeout). CUDA allows this only while the parent has not initialized it, so the driver never
touches the device itself: everything that does runs in a child.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORK = multiprocessing.get_context("fork")


@dataclass(frozen=True)
class ChildResult:
    exit_code: int | None  # None: killed at the timeout
    seconds: float
    log: Path

    def last_line(self) -> str:
        """The log's last non-empty line: where the CLI or Python prints the error."""
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        return lines[-1] if lines else "(no output)"


def _child(target: Callable[..., Any], args: tuple, log: Path, workdir: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Python's streams too: a host that captured them (pytest) would keep the child's output
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.setpgrp()  # its own process group: a timeout ends whatever it started too
    os.chdir(workdir)
    try:
        target(*args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_forked(
    target: Callable[..., Any], args: tuple, log: Path, workdir: Path, timeout_s: float
) -> ChildResult:
    """Call target(*args) in a forked child inside `workdir`; its exit code (a SystemExit's
    code, 1 for an exception, whose traceback lands in the log) and wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    # a buffered line of the parent's would otherwise be printed again by the child
    sys.stdout.flush()
    sys.stderr.flush()
    # not a daemon: those may not start processes, and torch.compile's workers are processes
    child = FORK.Process(target=_child, args=(target, args, log, workdir))
    start = time.perf_counter()
    child.start()
    child.join(timeout_s)
    if child.is_alive():
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:  # killed before it made its group
            child.kill()
        child.join()
        return ChildResult(None, time.perf_counter() - start, log)
    return ChildResult(child.exitcode, time.perf_counter() - start, log)
