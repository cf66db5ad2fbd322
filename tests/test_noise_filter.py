"""Issue 23, item 6: only what a user can act on reaches the terminal (library warnings and log
lines go to the run's log.txt), paths are never broken across lines, counts print as integers;
and item 1 for the commands that take a run: a wrong run is answered before torch loads."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rich.table import Table

from nnlab import run_log
from nnlab.console import fmt, results_table
from nnlab.errors import Notice, UserError
from tests.helpers import QUICK, only_run

# The offenders, each said through its library's own logger and handler
DISTRIBUTED = ("lightning_fabric.utilities.distributed", "Initializing distributed: GLOBAL_RANK: 0")
NO_CUDA = ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='/opt/cuda'")


def _say_what_libraries_say() -> None:
    logging.getLogger(DISTRIBUTED[0]).info(DISTRIBUTED[1])
    logging.getLogger(NO_CUDA[0]).warning(NO_CUDA[1])
    from optuna.exceptions import ExperimentalWarning

    warnings.warn("set_metric_names is experimental", ExperimentalWarning, stacklevel=1)
    warnings.warn("left out 3 rows with missing values", Notice, stacklevel=1)


def test_library_lines_go_to_the_run_log_and_notices_to_the_terminal(
    nnlab, workdir, monkeypatch, capfd
):
    from nnlab.tasks.supervised import SupervisedTask

    monkeypatch.setattr(
        SupervisedTask, "on_train_start", lambda self: _say_what_libraries_say(), raising=False
    )
    handlers = {name: list(logging.getLogger(name).handlers) for name in ("", "lightning_fabric")}
    result = nnlab("train", *QUICK)
    assert result.exit_code == 0, result.output
    # Lightning's and torch's handlers write to the process's stderr, not the runner's
    shown = result.output + "".join(capfd.readouterr())
    assert "Warning: left out 3 rows with missing values" in shown, "nnlab's notice is shown"
    for said in (DISTRIBUTED[1], NO_CUDA[1], "experimental"):
        assert said not in shown
    log = (only_run(workdir) / "log.txt").read_text()
    assert f"INFO {DISTRIBUTED[0]}" in log and DISTRIBUTED[1] in log
    assert f"WARNING {NO_CUDA[0]}" in log and NO_CUDA[1] in log
    assert "ExperimentalWarning: set_metric_names is experimental" in log
    assert "left out 3 rows" not in log, "a notice is the user's, shown once"
    # the libraries speak as before once the run is over
    assert handlers == {name: logging.getLogger(name).handlers for name in handlers}


def test_a_library_warning_about_the_users_setting_is_shown_in_nnlabs_words(nnlab, workdir):
    result = nnlab("train", "trainer.precision=16-mixed", "trainer.max_epochs=1", *QUICK[1:])
    assert result.exit_code == 0, result.output
    message = " ".join(result.output.split())
    assert "Warning: trainer.precision=16-mixed: there is no fp16 mixed precision" in message
    assert "accelerator_connector.py" not in result.output and "Trainer(" not in result.output
    log = (only_run(workdir) / "log.txt").read_text()
    assert "AMP with fp16 is not supported on CPU" in log, "Lightning's own words, logged"


def test_a_refused_command_writes_no_log_and_a_crash_without_a_run_shows_it(tmp_path, capsys):
    torch_log = logging.getLogger(NO_CUDA[0])
    before = list(logging.getLogger().handlers)
    with pytest.raises(UserError), run_log.captured(tmp_path):
        torch_log.warning(NO_CUDA[1])
        raise UserError("bad input")
    assert not (tmp_path / "log.txt").exists(), "a refused command leaves the run as it was"
    with pytest.raises(RuntimeError), run_log.captured():
        torch_log.warning(NO_CUDA[1])
        raise RuntimeError("boom")
    assert NO_CUDA[1] in capsys.readouterr().err, "beside the traceback, it may tell why"
    assert logging.getLogger().handlers == before


def test_captures_nest_and_never_write_through_a_link(tmp_path):
    outer, inner, elsewhere = (tmp_path / name for name in ("outer", "inner", "elsewhere"))
    for folder in (outer, inner, elsewhere):
        folder.mkdir()
    (inner / "log.txt").symlink_to(elsewhere / "planted.txt")
    torch_log = logging.getLogger(NO_CUDA[0])
    with run_log.captured(outer):
        torch_log.warning("before the run")
        with run_log.captured() as run:
            run_log.keep_in(inner)
            torch_log.warning("in the run")
        torch_log.warning("after the run")
    lines = (outer / "log.txt").read_text().splitlines()
    assert [line.rpartition(": ")[2] for line in lines] == ["before the run", "after the run"]
    assert run.lines and not (elsewhere / "planted.txt").exists()


def test_a_wrong_run_is_answered_before_torch_loads(tmp_path):
    """eval, predict, export and --resume: exit 2 with the message, torch never imported."""
    driver = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from nnlab.cli import app\n"
        "answers = [CliRunner().invoke(app, a.split()) for a in json.loads(sys.argv[1])]\n"
        "print(json.dumps([[r.exit_code, r.output] for r in answers]))\n"
        "assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules\n"
    )
    asked = [
        "eval nothere",
        "eval latest",
        "predict nothere x.csv",
        "export nothere --format torchscript",
        "train --resume nothere",
    ]
    done = subprocess.run(
        [sys.executable, "-c", driver, json.dumps(asked)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout)
    assert [code for code, _ in answers] == [2] * len(asked), answers
    assert "There are no runs in" in answers[1][1]
    for _, output in answers[:1] + answers[2:]:
        assert "'nothere' is not a run directory, run name or checkpoint file" in output


def test_paths_are_never_broken_and_counts_print_whole(nnlab, workdir, monkeypatch):
    deep = "outputs/" + "/".join(["a_rather_long_folder_name"] * 4)
    result = nnlab("train", f"output_dir={deep}", "name=a_run_with_quite_a_long_name", *QUICK)
    assert result.exit_code == 0, result.output
    (run,) = (workdir / deep / "runs").iterdir()
    monkeypatch.setenv("COLUMNS", "60")
    evaluated = nnlab("eval", "latest", "--output-dir", deep)
    assert evaluated.exit_code == 0, evaluated.output
    lines = evaluated.output.splitlines()
    assert f"Checkpoint: {deep}/runs/{run.name}/checkpoints/best.ckpt" in lines
    assert f"Run directory: {deep}/runs/{run.name}" in lines
    monkeypatch.setenv("COLUMNS", "20")  # narrower than the run's name
    listed = nnlab("runs", "--output-dir", deep).output
    assert any("a_run_with_quite_a_long_name" in line for line in listed.splitlines()), listed


def test_counts_are_integers_and_measures_keep_their_decimals():
    assert fmt(12.0, "epochs") == "12" and fmt(270.0, "test_samples") == "270"
    assert fmt(3.0, "val/samples") == "3" and fmt(86026, "params") == "86026"
    assert fmt(1.0, "test/acc") == "1.0000", "a perfect accuracy is still a rate"
    assert fmt(2.0, "train/loss_step") == "2.0000" and fmt(0.5, "epochs") == "0.5000"
    table: Table = results_table("t", {"epochs": 30.0, "test/acc": 0.5}, ["epochs", "test/acc"])
    assert [list(column.cells) for column in table.columns] == [
        ["epochs", "test/acc"],
        ["30", "0.5000"],
    ]


def test_board_drops_only_tensorboards_data_loading_note(workdir):
    pytest.importorskip("tensorboard_data_server", reason="the note comes with the data server")
    (workdir / "outputs").mkdir()
    board = subprocess.Popen(
        [str(Path(sys.executable).parent / "nnlab"), "board", "--port", "0"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        assert board.stdout is not None
        started = board.stdout.readline()  # the URL line, once TensorBoard serves
        assert started.startswith("TensorBoard: http://127.0.0.1:"), started
    finally:
        board.send_signal(signal.SIGINT)
        _, said = board.communicate(timeout=60)
    assert "experimental fast data loading" not in said and "load_fast" not in said, said


def test_a_forked_worker_appends_its_lines_as_they_come(tmp_path):
    # DataLoader workers are forked inside the run's capture and end with os._exit
    with run_log.captured(tmp_path):
        child = os.fork()
        if child == 0:
            logging.getLogger(NO_CUDA[0]).warning("said in a worker")
            os._exit(0)
        os.waitpid(child, 0)
        assert "said in a worker" in (tmp_path / "log.txt").read_text()
