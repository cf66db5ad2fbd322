"""`nnlab runs` (the run table) and `nnlab board` (TensorBoard on outputs/) (issue 4)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

from tests.helpers import QUICK, all_runs, assert_clear_error, metrics_of


def table_rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(r"\d{4}-\d\d-\d\d_", line)]


def test_runs_table_filters_sorts_and_limits(nnlab, workdir):
    assert nnlab("train", *QUICK, "name=small", "model.hidden=8").exit_code == 0
    assert nnlab("train", *QUICK, "name=conv", "model=cnn").exit_code == 0
    runs = {run.name.split("_", 2)[2]: metrics_of(run) for run in all_runs(workdir)}

    listed = nnlab("runs")
    assert listed.exit_code == 0, listed.output
    rows = table_rows(listed.output)
    assert len(rows) == 2 and all("finished" in row for row in rows)
    assert f"{runs['conv']['test/acc']:.4f}" in listed.output

    only_cnn = table_rows(nnlab("runs", "--filter", "model=cnn").output)
    assert len(only_cnn) == 1 and "conv" in only_cnn[0]

    ranked = table_rows(nnlab("runs", "--sort", "test/loss").output)
    best = min(runs, key=lambda name: runs[name]["test/loss"])
    assert best in ranked[0], "lowest loss first"

    newest = table_rows(nnlab("runs", "--last", "1").output)
    assert len(newest) == 1 and "conv" in newest[0]


def test_runs_bad_filter_or_metric_is_a_clear_error(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    assert_clear_error(nnlab("runs", "--filter", "modle=cnn"), ["'modle'", "Did you mean 'model'"])
    assert_clear_error(nnlab("runs", "--sort", "val/ac"), ["'val/ac'", "val/acc"])
    assert_clear_error(nnlab("runs", "--filter", "cnn"), ["key=value"])


def test_runs_with_no_runs_says_how_to_make_one(nnlab, workdir):
    result = nnlab("runs")
    assert result.exit_code == 0 and "nnlab train" in result.output


def test_board_serves_the_runs_scalars_over_http(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    (run,) = all_runs(workdir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    board = subprocess.Popen(
        [sys.executable, "-m", "nnlab.cli", "board", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = board.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        tags: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and f"runs/{run.name}/tb" not in tags:
            time.sleep(1)
            with urllib.request.urlopen(url + "data/plugin/scalars/tags", timeout=10) as reply:
                tags = json.load(reply)
        assert {"train/loss", "val/acc", "test/acc"} <= set(tags[f"runs/{run.name}/tb"])
    finally:
        board.terminate()
        board.wait(timeout=30)


def test_board_without_outputs_is_a_clear_error(nnlab, workdir):
    assert_clear_error(nnlab("board"), ["outputs does not exist", "nnlab train"])
