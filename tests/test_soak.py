"""Soak test (slow tier): many short runs in one process leak no processes or file handles,
and `nnlab runs` lists every one of them with its metrics."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from tests.helpers import all_runs, metrics_of

RUNS = 50
# Small constant slack: lazily opened files (a font cache, /dev/urandom) may stay open once.
FD_SLACK = 5
SMALL = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=tensorboard",
    "model.hidden=16",
    "model.depth=1",
]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def children() -> list[int]:
    """Live child processes of this one (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        me = str(os.getpid())
        found = []
        for entry in Path("/proc").iterdir():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # not a process, or it exited while we looked
            if fields[1] == me and fields[0] != "Z":
                found.append(int(entry.name))
        return found
    return [p.pid for p in psutil.Process().children(recursive=True)]


@pytest.mark.slow
def test_fifty_runs_in_one_process_leak_nothing(nnlab, workdir):
    # One warm-up run: imports, thread pools and caches that live for the whole process.
    assert nnlab("train", *SMALL, "name=warmup").exit_code == 0
    gc.collect()
    fds, tasks, kids = open_fds(), threads(), children()
    for i in range(RUNS):
        result = nnlab("train", *SMALL, f"seed={i}", f"name=soak{i}")
        assert result.exit_code == 0, result.output
    gc.collect()
    assert children() == kids, "training left child processes behind"
    assert open_fds() <= fds + FD_SLACK, f"file handles: {fds} before, {open_fds()} after"
    assert threads() <= tasks + FD_SLACK, f"threads: {tasks} before, {threads()} after"

    soak = [run for run in all_runs(workdir) if "soak" in run.name]
    assert len(soak) == RUNS
    for run in soak:
        metrics = metrics_of(run)
        assert metrics["status"] == "finished" and 0.0 <= metrics["test/acc"] <= 1.0, run
        assert any((run / "tb").glob("events.out.tfevents.*")), "the TensorBoard logger wrote"
    listing = nnlab("runs", "--wide", "--filter", "status=finished")
    assert listing.exit_code == 0, listing.output
    assert f"{RUNS + 1} of {RUNS + 1} runs" in listing.output
    table = " ".join(listing.output.split())
    for run in soak:
        assert run.name in table
    # every listed run shows a test accuracy: a number in the test/acc column of each row
    rows = [line for line in listing.output.splitlines() if "soak" in line]
    assert len(rows) == RUNS and all("0." in row or "1.0000" in row for row in rows)
