"""`nnlab sweep` (Optuna over Hydra overrides) and `nnlab train -m` / `--from-sweep` (issue 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from nnlab.callbacks.pruning import PruningCallback
from tests.helpers import all_runs, assert_clear_error

FAST = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "model.hidden=32"]


def study_of(workdir: Path, name: str) -> optuna.Study:
    journal = workdir / "outputs" / "sweeps" / name / "journal.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


def trial_dirs(workdir: Path, name: str) -> list[Path]:
    return sorted((workdir / "outputs" / "sweeps" / name / "trials").iterdir())


def test_diverged_trial_is_reported_and_the_sweep_goes_on(nnlab, workdir):
    result = nnlab(
        "sweep",
        "optimizer=sgd",
        "norm=none",
        "optimizer.lr=choice(1e12,0.05)",  # the first one blows the weights up to NaN
        *FAST,
        "--sampler",
        "grid",
        "--pruner",
        "none",
        "--name",
        "lrs",
    )
    assert result.exit_code == 0, result.output
    assert "failed trial 0" in result.output and "diverged" in result.output
    trials = study_of(workdir, "lrs").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    best = yaml.safe_load((workdir / "outputs" / "sweeps" / "lrs" / "best.yaml").read_text())
    assert "optimizer.lr=0.05" in best["overrides"] and "trainer.max_epochs=1" in best["overrides"]
    assert len(trial_dirs(workdir, "lrs")) == 2, "every trial is a normal run directory"

    again = nnlab("train", "--from-sweep", "lrs", "trainer.max_epochs=1")
    assert again.exit_code == 0, again.output
    (run,) = all_runs(workdir)
    typed = yaml.safe_load((run / "overrides.yaml").read_text())["overrides"]
    assert "optimizer.lr=0.05" in typed


def test_two_workers_share_one_journal_and_cap_the_total(nnlab, workdir):
    result = nnlab(
        "sweep",
        "optimizer=choice(sgd,adam)",
        "optimizer.lr=interval(0.001,0.01)",
        *FAST,
        "--trials",
        "4",
        "--jobs",
        "2",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--name",
        "pair",
    )
    assert result.exit_code == 0, result.output
    trials = study_of(workdir, "pair").get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers took trials"
    assert len({t.params["optimizer.lr"] for t in trials}) == 4, "no repeated proposals"
    assert len(trial_dirs(workdir, "pair")) == 4
    listed = nnlab("runs", "--sweep", "pair")
    assert listed.exit_code == 0 and listed.output.count("trial-") == 4


TOTAL = 6  # trials in the killed sweep: enough that the kill lands while some are owed


def test_killed_sweep_resumes_without_repeating_finished_trials(workdir):
    command = [
        sys.executable,
        "-m",
        "nnlab.cli",
        "sweep",
        "optimizer.lr=interval(0.001,0.01)",
        *FAST,
        "--trials",
        str(TOTAL),
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--name",
        "kill",
    ]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = workdir / "outputs" / "sweeps" / "kill" / "journal.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)  # a trial takes about a second: kill after the first, well before the last
        if journal.exists() and any(
            t.state == TrialState.COMPLETE for t in study_of(workdir, "kill").get_trials()
        ):
            break
    os.kill(first.pid, signal.SIGKILL)  # no chance to clean up: the hardest case
    first.wait()
    before = {
        t.number: t
        for t in study_of(workdir, "kill").get_trials()
        if t.state == TrialState.COMPLETE
    }
    assert 1 <= len(before) < TOTAL

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    trials = study_of(workdir, "kill").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TOTAL
    for number, trial in before.items():  # finished trials are kept, not run again
        assert trials[number].state == TrialState.COMPLETE
        assert trials[number].params == trial.params
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("interrupted") for t in killed)


def test_multirun_trains_every_combination(nnlab, workdir):
    result = nnlab("train", "-m", "optimizer=sgd,adam", "norm=none,batch", *FAST)
    assert result.exit_code == 0, result.output
    made = [
        yaml.safe_load((r / "overrides.yaml").read_text())["overrides"] for r in all_runs(workdir)
    ]
    combos = {(o[0], o[1]) for o in made}
    assert combos == {
        ("optimizer=sgd", "norm=none"),
        ("optimizer=sgd", "norm=batch"),
        ("optimizer=adam", "norm=none"),
        ("optimizer=adam", "norm=batch"),
    }


def test_pruning_callback_stops_a_trial_below_the_median():
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    for value in (0.9, 0.95):
        trial = study.ask()
        trial.report(value, step=0)
        study.tell(trial, value)
    callback = PruningCallback(study.ask(), "val/acc")
    trainer = SimpleNamespace(
        sanity_checking=False, callback_metrics={"val/acc": 0.2}, current_epoch=0, should_stop=False
    )
    callback.on_validation_end(trainer, None)
    assert callback.pruned and trainer.should_stop


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["trainer.max_epochs=1"], ["search space is empty"]),
        (["optimizer.lr=interval(0.001,0.1)", "--sampler", "grid"], ["grid", "interval"]),
        (["optimizer.lr=interval(0.001,0.1)", "--sampler", "tpee"], ["'tpee'", "tpe"]),
        (["optimizer=choice(sgd,adma)"], ["'adma'", "Did you mean 'adam'"]),
        (["sweep=mlp_digit"], ["'mlp_digit'", "Did you mean 'mlp_digits'"]),
    ],
)
def test_sweep_input_errors(nnlab, workdir, arguments, expected):
    assert_clear_error(nnlab("sweep", *arguments), expected)
    assert not (workdir / "outputs" / "sweeps").exists() or not any(
        (workdir / "outputs" / "sweeps").rglob("trials")
    )


def test_from_sweep_that_does_not_exist_is_a_clear_error(nnlab, workdir):
    assert_clear_error(nnlab("train", "--from-sweep", "nope"), ["No finished sweep 'nope'"])
