"""A sweep reports what happened (issue 23): trials scored by the task's own metric, a metric the
task does not record refused before any trial, exit 1 when no trial completed, and Ctrl-C an
exit 130 with the resume command and its trials listed as interrupted, then resumed exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tests.helpers import assert_clear_error

FAST = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "model.hidden=16",
]
GRID = ["--sampler", "grid", "--pruner", "none"]


def trials_of(workdir: Path, name: str) -> list[FrozenTrial]:
    journal = workdir / "outputs" / "sweeps" / name / "journal.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def recorded(run: Path) -> set[str]:
    """The metric names in a run's metrics.json."""
    return {k for k in json.loads((run / "metrics.json").read_text()) if "/" in k}


@pytest.fixture
def houses(workdir: Path) -> Path:
    """A table whose numeric target (fractions) makes data=table a regression."""
    rng = np.random.default_rng(0)
    rooms, area = rng.integers(1, 6, 120), rng.uniform(30, 150, 120)
    price = 0.5 * rooms + 0.02 * area + rng.normal(0, 0.1, 120)
    rows = zip(rooms, area, price, strict=True)
    lines = ["rooms,area,price", *(f"{r},{a:.2f},{p:.3f}" for r, a, p in rows)]
    path = workdir / "houses.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def table(path: Path) -> list[str]:
    return ["data=table", f"data.path={path}", "data.target=price", "data.batch_size=32"]


def test_a_regression_sweep_is_scored_by_val_loss_minimized(nnlab, workdir, houses):
    result = nnlab(
        "sweep", *table(houses), "optimizer.lr=choice(0.01,0.001)", *FAST, *GRID, "--name", "reg"
    )
    assert result.exit_code == 0, result.output
    assert "minimize val/loss" in result.output and "2 complete" in result.output
    assert "best trials of reg (val/loss)" in result.output
    trials = trials_of(workdir, "reg")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:  # each trial's value is its run's val/loss
        run = Path(trial.user_attrs["run"])
        metrics = json.loads((run / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val/loss"])
        # what the sweep checks sweep.metric against is what a run records
        assert recorded(run) == {
            *(f"{s}/{n}" for s in ("train", "val", "test") for n in ("loss", "mae")),
            "train/lr",
        }
    best = min(trials, key=lambda t: t.value)
    assert f"optimizer.lr={best.params['optimizer.lr']}" in result.output.split("┃")[-1]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            ["sweep.metric=val/acc"],  # a classifier's metric on a regression
            ["sweep.metric=val/acc", "RegressionTask", "val/loss, val/mae", "Did you mean"],
        ),
        (
            ["sweep.metric=val/los"],
            ["sweep.metric=val/los", "Did you mean 'val/loss'?"],
        ),
        (
            ["eval_train=true", "sweep.metric=trainset/ma"],  # the training split scored too
            ["trainset/loss, trainset/mae, val/loss", "Did you mean 'trainset/mae'?"],
        ),
        (
            ["trainer.limit_val_batches=0"],  # validation off: the task's val/loss never comes
            ["RegressionTask with validation off", "records no val/loss", "test/loss"],
        ),
    ],
)
def test_a_metric_the_task_does_not_record_is_refused_before_any_trial(
    nnlab, workdir, houses, setting, expected
):
    space = [*table(houses), "optimizer.lr=choice(0.01,0.001)", *FAST, *setting]
    result = nnlab("sweep", *space, *GRID, "--name", "reg")
    assert_clear_error(result, expected)
    said = " ".join(result.output.split())
    listed = said.split("Its metrics: ")[-1].split(".")[0].split(", ") if "Its" in said else []
    assert len(listed) == len(set(listed)), "each metric named once"
    assert not (workdir / "outputs" / "sweeps").exists(), "nothing written, no trial trained"


def test_trials_of_different_tasks_need_a_metric_they_share(nnlab, workdir):
    result = nnlab("sweep", "data=choice(digits,sine)", *FAST, *GRID, "--name", "mixed")
    assert_clear_error(
        result,
        ["ClassificationTask: val/acc", "RegressionTask: val/loss", "sweep.metric", "val/loss"],
    )
    assert not (workdir / "outputs" / "sweeps").exists()


def test_a_sweep_in_which_no_trial_completed_exits_1(nnlab, workdir):
    diverging = ["optimizer=sgd", "norm=none", "optimizer.lr=choice(1e12,1e13)"]
    result = nnlab("sweep", *diverging, *FAST, *GRID, "--name", "nan")
    assert result.exit_code == 1, result.output
    assert "No trial completed (2 failed)" in " ".join(result.output.split())
    assert "failed trial 0" in result.output and "failed trial 1" in result.output
    assert "diverged" in result.output and "Traceback" not in result.output
    assert [t.state for t in trials_of(workdir, "nan")] == [TrialState.FAIL] * 2


def test_ctrl_c_exits_130_with_the_resume_command_and_resumes_exactly(nnlab, workdir):
    # Every trial trains for 3 s (trainer.max_time): long enough to be stopped in the middle.
    timed = [*FAST[1:], "trainer.max_epochs=100000", "trainer.max_time=00:00:00:03"]
    command = [
        *(sys.executable, "-m", "nnlab.cli", "sweep", "optimizer.lr=choice(0.01,0.005)"),
        *(*timed, *GRID, "--name", "stop"),
    ]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = workdir / "outputs" / "sweeps" / "stop" / "trials"
    deadline = time.monotonic() + 120
    try:
        # the first trial finished and the second one training
        while not (second.is_dir() and len(list(second.iterdir())) == 2):
            assert time.monotonic() < deadline and sweep.poll() is None, sweep.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(sweep.pid, signal.SIGINT)  # Ctrl-C
        out, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert sweep.returncode == 130, (out, err)
    said = " ".join(err.split())
    assert "Sweep stopped with 1 of 2 trials still to run" in said
    assert "Continue it with: nnlab sweep --name stop --resume" in said
    assert "1 complete, 1 interrupted" in out and "interrupted trial 1" in out
    assert "failed" not in out and "Traceback" not in out + err
    stopped = trials_of(workdir, "stop")[1]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"]

    resumed = nnlab("sweep", "--name", "stop", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "2 complete, 1 interrupted" in resumed.output
    assert "interrupted trial 1: rerun as trial" in resumed.output
    trials = trials_of(workdir, "stop")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2, "exactly --trials, the interrupted one not counted"
    assert sorted(t.params["optimizer.lr"] for t in done) == [0.005, 0.01]
    assert [t.user_attrs.get("retry_of") for t in trials].count(1) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "metric"), [("model=gan", "val/sample_score"), ("model=faster_rcnn", "val/map_50")]
)
def test_gan_and_detection_sweeps_use_their_own_metric(nnlab, workdir, model, metric):
    # Slow: the GAN's judge trains first, and a detector is slow per batch even when tiny.
    space = [model, "optimizer.lr=choice(0.001)", *FAST[:-1], "trainer.limit_test_batches=1"]
    result = nnlab("sweep", *space, *GRID, "--name", "own")
    assert result.exit_code == 0, result.output
    assert f"maximize {metric}" in result.output
    (trial,) = trials_of(workdir, "own")
    assert trial.state == TrialState.COMPLETE
    # the names the sweep checked sweep.metric against are the ones the run recorded
    refused = nnlab("sweep", *space, "sweep.metric=nope", *GRID, "--name", "other")
    listed = " ".join(refused.output.split()).split("Its metrics: ")[1].split(".")[0]
    assert set(listed.split(", ")) == recorded(Path(trial.user_attrs["run"]))
