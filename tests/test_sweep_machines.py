"""Sweeps across machines: workers that share one RDB storage, each a process with its own working
directory and outputs/ (standing for a machine), run exactly --trials trials in total, and the
trial of a worker killed mid-trial is run again, with its parameters, by the others (Optuna's
heartbeat). SQLite here; PostgreSQL too where the `postgres_url` server can be started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nnlab.recovery import BEAT_ATTR
from nnlab.storage_urls import rdb_url
from tests.helpers import FAST_TRIAL, assert_clear_error

FAST = FAST_TRIAL
SPACE = ["optimizer.lr=interval(0.001,0.01)", "--sampler", "random", "--pruner", "none"]
HEARTBEAT = 2  # seconds: a killed worker's trial is found stale about 5 s after it died
TOTAL = 5


def sqlite_url(path: Path) -> str:
    """An SQLite storage, its tables made: machines that open a fresh database at one moment
    race to make them (nnlab/rdb_storage.py's business, not this file's)."""
    url = f"sqlite:///{path}"
    optuna.storages.RDBStorage(url).engine.dispose()
    return url


def trials_in(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=rdb_url(url)).get_trials()


def machine(root: Path, url: str, study: str, *more: str) -> subprocess.Popen:
    """`nnlab sweep` as another machine would run it: its own process and working directory,
    the same storage and study. Its output goes to root/out.txt."""
    root.mkdir()
    command = [sys.executable, "-m", "nnlab.cli", "sweep", *SPACE, *FAST, "--storage", url]
    command += ["--study", study, "--name", "shared", "--trials", str(TOTAL), *more]
    command += ["--heartbeat", str(HEARTBEAT)]
    with open(root / "out.txt", "w") as out:
        return subprocess.Popen(
            command,
            cwd=root,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(machines: dict[Path, subprocess.Popen], timeout: float = 300) -> dict[Path, str]:
    """Wait for every machine; their outputs. A machine still running at the end is killed."""
    deadline = time.monotonic() + timeout
    try:
        for process in machines.values():
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in machines.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return {root: (root / "out.txt").read_text() for root in machines}


def ran_on(roots: list[Path]) -> list[str]:
    """The trial run directories written on the machines."""
    found = [p for r in roots for p in (r / "outputs/sweeps/shared/trials").glob("*")]
    return sorted(p.name for p in found)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "study.db")
    return str(request.getfixturevalue("postgres_url"))


def test_machines_run_exactly_the_trials(tmp_path, storage_url):
    study = f"exact-{tmp_path.name}"[-60:]
    roots = [tmp_path / f"machine-{m}" for m in "ab"]
    machines = {root: machine(root, storage_url, study) for root in roots}
    outputs = finish(machines)
    assert [p.returncode for p in machines.values()] == [0, 0], outputs
    trials = trials_in(storage_url, study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * TOTAL, [
        (t.number, t.state.name, t.user_attrs) for t in trials
    ]
    assert len(ran_on(roots)) == TOTAL  # each trial ran once, on one machine


# The race is in the claim, not in training: here a trial is a few milliseconds of sleep, so that
# rounds of machines racing for the last trials take seconds. The real worker loop, claim lock,
# storage and recovery run; only the trial's objective (training, in the tests above) is swapped.
RACER = textwrap.dedent(
    """
    import random, sys, time
    from optuna.distributions import FloatDistribution
    import nnlab.sweep as sweeps
    from nnlab.study import Sweep, open_study

    url, out, worker, start, gap, rounds, total = sys.argv[1:8]

    def objective(sweep, trial):
        time.sleep(random.uniform(0.0, 0.03))
        return trial.params["x"]

    sweeps._objective = objective
    for round_ in range(int(rounds)):
        sweep = Sweep(name="race", space={"x": FloatDistribution(0.0, 1.0)}, grid=None,
                      fixed=[], trials=int(total), metric="val/acc", direction="maximize",
                      sampler="random", pruner="none", storage=url, study=f"race-{round_}",
                      output_dir=out, worker=int(worker), heartbeat=1)
        open_study(sweep)  # the database opened before the start: every machine claims at once
        time.sleep(max(0.0, float(start) + round_ * float(gap) - time.time()))
        sweeps.work(sweep)
    """
)


def test_racing_machines_never_overshoot(tmp_path):
    url, machines, rounds, total = sqlite_url(tmp_path / "race.db"), 4, 3, 6
    start, gap = time.time() + 4.0, 3.0  # time to import; time for a round
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, str(tmp_path / f"m{i}"), str(i)]
            + [str(start), str(gap), str(rounds), str(total)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(machines)
    ]
    errors = [racer.communicate(timeout=120)[1] for racer in racers]
    assert [r.returncode for r in racers] == [0] * machines, errors
    workers = set()
    for round_ in range(rounds):
        trials = trials_in(url, f"race-{round_}")
        assert [t.state for t in trials] == [TrialState.COMPLETE] * total, (
            round_,
            [(t.number, t.state.name) for t in trials],
        )
        workers |= {t.user_attrs["worker"] for t in trials}
    assert len(workers) > 1, "the machines did not race: one ran every trial"


def wait_for_running(url: str, study: str, pids: set[int], timeout: float = 240):
    """The first trial the storage shows RUNNING (and beating) on one of the machines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = trials_in(url, study)
        except KeyError:  # no such study yet
            trials = []
        for trial in trials:
            worker = str(trial.user_attrs.get("worker", ""))
            pid = int(worker.split(":")[1]) if worker.count(":") == 2 else None
            if trial.state == TrialState.RUNNING and BEAT_ATTR in trial.user_attrs and pid in pids:
                return trial, pid
        time.sleep(0.05)
    raise AssertionError("no machine started a trial")


def test_a_killed_machine_s_trial_is_run_again_by_the_others(tmp_path):
    url, study = sqlite_url(tmp_path / "study.db"), "kill"
    roots = [tmp_path / f"machine-{m}" for m in "abc"]
    machines = {root: machine(root, url, study) for root in roots}
    try:
        killed, pid = wait_for_running(url, study, {p.pid for p in machines.values()})
        os.kill(pid, signal.SIGKILL)  # mid-trial, no chance to record anything
    finally:
        outputs = finish(machines)
    survivors = {r: o for r, o in outputs.items() if machines[r].pid != pid}
    assert [machines[r].returncode for r in survivors] == [0, 0], survivors
    trials = {t.number: t for t in trials_in(url, study)}
    dead = trials[killed.number]
    assert dead.state == TrialState.FAIL and "error" not in dead.user_attrs
    reruns = [t for t in trials.values() if t.user_attrs.get("retry_of") == killed.number]
    assert [(t.state, t.params) for t in reruns] == [(TrialState.COMPLETE, killed.params)]
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == TOTAL
    assert len({t.params["optimizer.lr"] for t in complete}) == TOTAL  # none ran twice
    assert set(trials) == {t.number for t in complete} | {killed.number}
    summary = " ".join(next(iter(survivors.values())).split())
    assert f"{TOTAL} complete, 1 interrupted" in summary
    assert f"interrupted trial {killed.number}: rerun as trial {reruns[0].number}" in summary


def test_every_worker_of_a_study_beats_alike(nnlab, workdir):
    url = f"sqlite:///{workdir / 'study.db'}"
    result = nnlab("sweep", *SPACE, *FAST, "--trials", "1", "--heartbeat", "5")
    assert_clear_error(result, ["--heartbeat 5", "--storage", "leave --heartbeat out"])
    stored = optuna.create_study(study_name="beat", storage=url, direction="maximize")
    stored.set_user_attr("nnlab.heartbeat", 2)
    result = nnlab("sweep", *SPACE, *FAST, "--trials", "1", "--storage", url, "--study", "beat")
    assert result.exit_code == 0, result.output  # joins with the study's heartbeat
    assert [t.user_attrs[BEAT_ATTR] for t in stored.get_trials()] == [2]
    result = nnlab(
        "sweep", *SPACE, *FAST, "--trials", "1", "--storage", url, "--study", "beat",
        "--heartbeat", "7",
    )  # fmt: skip
    assert_clear_error(result, ["--heartbeat 7", "every 2 s", "--heartbeat 2"])
