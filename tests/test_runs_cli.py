"""`nnlab runs` (the run table) and `nnlab board` (TensorBoard on outputs/) (issue 4)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

from nnlab import noise, runs
from tests.helpers import QUICK, all_runs, assert_clear_error, metrics_of

TINY = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none"]


def table_rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("│")]


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("│").split("│")]


def test_runs_table_filters_sorts_and_limits(nnlab, workdir):
    assert nnlab("train", *QUICK, "name=small", "model.hidden=8").exit_code == 0
    assert nnlab("train", *QUICK, "name=conv", "model=cnn").exit_code == 0
    runs = {run.name.split("_", 2)[2]: metrics_of(run) for run in all_runs(workdir)}

    listed = nnlab("runs")
    assert listed.exit_code == 0, listed.output
    rows = table_rows(listed.output)
    assert len(rows) == 2 and all("finished" in row for row in rows)
    conv = runs["conv"]
    low, high = noise.wilson(conv["test/acc"], conv["test_samples"])
    assert cells(rows[1])[0] == "conv", "the run's name= first"
    assert f"{conv['test/acc']:.3f}±{(high - low) / 2:.3f}" in rows[1]
    wide = nnlab("runs", "--wide").output
    assert f"{conv['test/acc']:.4f} [{low:.3f}, {high:.3f}]" in wide
    conv_dir = next(run for run in all_runs(workdir) if run.name.endswith("_conv"))
    assert conv_dir.name in wide, "--wide shows whole directory names"

    only_cnn = table_rows(nnlab("runs", "--filter", "model=cnn").output)
    assert len(only_cnn) == 1 and "conv" in only_cnn[0]

    ranked = table_rows(nnlab("runs", "--sort", "test/loss").output)
    best = min(runs, key=lambda name: runs[name]["test/loss"])
    assert best in ranked[0], "lowest loss first"

    newest = table_rows(nnlab("runs", "--last", "1").output)
    assert len(newest) == 1 and "conv" in newest[0]


def test_runs_fit_80_columns_group_by_and_print_csv_json_markdown(nnlab, workdir, monkeypatch):
    name = "digits_mlp_baseline"
    trained = nnlab("train", "-m", "optimizer=sgd,adam", "seed=0,1", f"name={name}", *TINY)
    assert trained.exit_code == 0, trained.output
    runs = [metrics_of(run) for run in all_runs(workdir)]
    monkeypatch.setenv("COLUMNS", "80")

    listed = nnlab("runs")
    assert listed.exit_code == 0, listed.output
    assert "…" not in listed.output, "no cell is cut"
    assert max(len(line) for line in listed.output.splitlines()) <= 80
    header = next(line for line in listed.output.splitlines() if line.startswith("┃"))
    assert cells(header.replace("┃", "│"))[:4] == ["run", "status", "optimizer", "seed"]
    rows = table_rows(listed.output)
    assert len(rows) == 4 and all(cells(row)[0] == name for row in rows)
    assert "Same in every run: model=mlp, data=digits" in " ".join(listed.output.split())

    grouped = nnlab("runs", "--group-by", "optimizer")
    assert grouped.exit_code == 0 and "…" not in grouped.output, grouped.output
    rows = {cells(row)[0]: cells(row) for row in table_rows(grouped.output)}
    assert sorted(rows) == ["adam", "sgd"] and rows["sgd"][1] == "2"
    sgd = [m for m in runs if m["choices"]["optimizer"] == "sgd"]
    spread = noise.spread(m["test/acc"] for m in sgd)
    assert rows["sgd"][2].startswith(noise.fmt_spread(spread)) and "±" in rows["sgd"][2]
    (record,) = [
        r
        for r in json.loads(nnlab("runs", "--group-by", "optimizer", "--format", "json").output)
        if r["optimizer"] == "sgd"
    ]
    assert record["n"] == 2 and record["test/acc"] == spread.mean
    assert record["test/acc_std"] == spread.std

    as_csv = list(csv.reader(io.StringIO(nnlab("runs", "--format", "csv").output)))
    assert len(as_csv) == 5 and {"run", "name", "test/acc", "test/acc_ci_low"} <= set(as_csv[0])
    as_json = json.loads(nnlab("runs", "--format", "json").output)
    assert [r["run"] for r in as_json] == [row[0] for row in as_csv[1:]]
    assert [r["test/acc"] for r in as_json] == [m["test/acc"] for m in runs], "values in full"
    markdown = nnlab("runs", "--format", "markdown").output.splitlines()
    assert len(markdown) == 6 and markdown[0] == f"| {' | '.join(as_csv[0])} |"

    assert_clear_error(nnlab("runs", "--format", "xml"), ["'xml'", "csv, json, markdown"])
    assert_clear_error(
        nnlab("runs", "--group-by", "optimzer"), ["'optimzer'", "Did you mean 'optimizer'"]
    )


def test_commands_take_a_runs_name_the_newest_of_that_name(nnlab, workdir):
    assert nnlab("train", *QUICK, "logger=none", "name=alpha", "model.hidden=8").exit_code == 0
    assert nnlab("train", *QUICK, "logger=none", "name=alpha", "model.hidden=16").exit_code == 0
    older, newer = sorted(all_runs(workdir), key=lambda run: metrics_of(run)["params"])
    before = {p: p.read_bytes() for p in older.rglob("*") if p.is_file()}

    evaluated = nnlab("eval", "alpha")
    assert evaluated.exit_code == 0, evaluated.output
    assert (newer / "eval.json").exists() and not (older / "eval.json").exists()
    resumed = nnlab("train", "--resume", "alpha", "trainer.max_epochs=3")
    assert resumed.exit_code == 0, resumed.output
    assert metrics_of(newer)["epochs"] == 3
    assert {p: p.read_bytes() for p in older.rglob("*") if p.is_file()} == before

    # the short id `nnlab runs` shows for a run is a name too
    assert nnlab("eval", runs.short_id(older)).exit_code == 0
    assert (older / "eval.json").exists()
    assert_clear_error(nnlab("eval", "alpah"), ["'alpah'", "Closest run names: alpha"])
    assert_clear_error(nnlab("train", "--resume", "alpah"), ["'alpah'", "alpha"])


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
