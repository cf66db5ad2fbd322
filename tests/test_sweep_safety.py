"""`nnlab sweep` safety: a sweep is its search space, dead workers' trials are run again however
they died, and storage passwords are never printed."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from nnlab.storage_urls import mask_url, scrub
from tests.helpers import FAST_TRIAL, assert_clear_error

FAST = FAST_TRIAL
PASSWORD = "Zq7-hunter2-SECRET"


def journal_of(workdir: Path, name: str) -> JournalStorage:
    path = workdir / "outputs" / "sweeps" / name / "journal.log"
    return JournalStorage(JournalFileBackend(str(path)))


def trials_of(storage: JournalStorage, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials toward --trials: completed, pruned, and failures that were not interruptions."""
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(
        t.state in done or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
        for t in trials
    )


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root with its modification time and content hash."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- 1. a sweep is its search space -----------------------------------------------------------
def test_a_different_space_under_the_same_name_is_refused_and_nothing_written(nnlab, workdir):
    first = ["optimizer=choice(sgd,adam)", *FAST, "--sampler", "random", "--pruner", "none"]
    result = nnlab("sweep", *first, "--trials", "1")  # no --name: the default 'sweep'
    assert result.exit_code == 0, result.output
    before = snapshot(workdir / "outputs")

    other = ["norm=choice(none,batch)", *FAST, "--sampler", "grid"]
    for arguments in (other, [*other, "--resume"], [*first, "sweep.metric=val/loss"]):
        refused = nnlab("sweep", *arguments)
        assert_clear_error(
            refused,
            ["another search space", "Stored: optimizer=choice(sgd,adam)", "--name sweep-2"],
        )
        assert "--resume" in refused.output
        assert snapshot(workdir / "outputs") == before, "a refused sweep writes nothing"
    sweep_dir = workdir / "outputs" / "sweeps" / "sweep"
    stored = yaml.safe_load((sweep_dir / "space.yaml").read_text())
    assert stored["swept"] == ["optimizer=choice(sgd,adam)"] and stored["study"] == "sweep"

    # The same space again resumes as before; --resume alone continues the stored space.
    again = nnlab("sweep", *first, "--trials", "1")
    assert again.exit_code == 0, again.output
    resumed = nnlab("sweep", "--resume", "--trials", "2")
    assert resumed.exit_code == 0, resumed.output
    trials = trials_of(journal_of(workdir, "sweep"), "sweep")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all("trainer.limit_train_batches=2" in t.user_attrs["overrides"] for t in trials)
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["study"] == "sweep" and best["trial"] in (0, 1)


def test_the_refusal_shows_both_spaces(nnlab, workdir):
    assert nnlab("sweep", "optimizer=choice(sgd,adam)", *FAST, "--trials", "1").exit_code == 0
    refused = nnlab("sweep", "norm=choice(none,batch)", *FAST, "--trials", "1")
    assert_clear_error(
        refused,
        [
            "Stored: optimizer=choice(sgd,adam), fixed: trainer.max_epochs=1",
            "Given: norm=choice(none,batch), fixed: trainer.max_epochs=1",
            "They differ in norm, optimizer",
            "nnlab sweep --name sweep --resume",
        ],
    )


def test_resume_needs_an_existing_sweep(nnlab, workdir):
    result = nnlab("sweep", "--resume", "--name", "nope")
    assert_clear_error(result, ["Nothing to resume", "'nope'"])
    assert not (workdir / "outputs" / "sweeps" / "nope").exists()


def test_a_sweep_directory_belongs_to_one_study(nnlab, workdir):
    space = ["optimizer=choice(sgd,adam)", *FAST, "--trials", "1", "--name", "shared"]
    assert nnlab("sweep", *space).exit_code == 0
    before = snapshot(workdir / "outputs")
    refused = nnlab("sweep", *space, "--study", "another")
    assert_clear_error(refused, ["study 'shared'", "'another'", "--name shared-2"])
    assert snapshot(workdir / "outputs") == before
    assert optuna.get_all_study_names(journal_of(workdir, "shared")) == ["shared"]


def test_a_study_from_before_stored_spaces_is_checked_by_its_trials(nnlab, workdir):
    storage = journal_of_new(workdir, "old")
    study = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    trial = study.ask({"optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adam"])})
    study.tell(trial, 0.5)
    refused = nnlab("sweep", "norm=choice(none,batch)", *FAST, "--name", "old", "--trials", "1")
    assert_clear_error(refused, ["another search space", "differ in norm, optimizer"])
    adopted = nnlab("sweep", "optimizer=choice(sgd,adam)", *FAST, "--name", "old", "--trials", "2")
    assert adopted.exit_code == 0, adopted.output
    assert len(trials_of(storage, "old")) == 2


def journal_of_new(workdir: Path, name: str) -> JournalStorage:
    (workdir / "outputs" / "sweeps" / name).mkdir(parents=True)
    return journal_of(workdir, name)


# -- 2. dead workers --------------------------------------------------------------------------
def test_a_dead_workers_trial_is_rerun_even_when_its_pid_is_alive_again(nnlab, workdir):
    # The killed worker's PID now belongs to a live process (here: this one), as after PID
    # reuse or while the dead worker is an unreaped zombie: its trial must still be rerun.
    storage = journal_of_new(workdir, "reuse")
    space = {"optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adam"])}
    study = optuna.create_study(study_name="reuse", storage=storage, direction="maximize")
    orphan = study.ask(space)
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    result = nnlab("sweep", "optimizer=choice(sgd,adam)", *FAST, "--name", "reuse", "--trials", "2")
    assert result.exit_code == 0, result.output
    trials = trials_of(storage, "reuse")
    assert counted(trials) == 2 and not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"]
    assert [t.user_attrs.get("retry_of") for t in trials].count(0) == 1, "rerun exactly once"
    assert trials[0].params in [t.params for t in trials[1:]], "the same point runs again"


@pytest.fixture
def reaper() -> Iterator[None]:
    """Make this process the parent of orphaned descendants and let them linger as zombies, as
    an init that does not reap (a container's PID 1, a supervisor) does: a SIGKILLed sweep's
    workers then keep answering os.kill(pid, 0). Reaped, and undone, afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    subreaper = 36  # PR_SET_CHILD_SUBREAPER
    if not sys.platform.startswith("linux") or libc.prctl(subreaper, 1, 0, 0, 0) != 0:
        pytest.skip("needs Linux's PR_SET_CHILD_SUBREAPER")
    try:
        yield
    finally:
        libc.prctl(subreaper, 0, 0, 0, 0)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    break
            except ChildProcessError:
                break


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def test_sigkilled_parallel_sweep_always_restarts_to_exactly_n_trials(workdir, reaper):
    command = [
        *(sys.executable, "-m", "nnlab.cli", "sweep", "optimizer.lr=interval(0.001,0.01)"),
        *FAST,
        *("--trials", "6", "--jobs", "2", "--sampler", "random", "--pruner", "none"),
        *("--name", "kill"),
    ]
    journal = workdir / "outputs" / "sweeps" / "kill" / "journal.log"
    storage: list[JournalStorage] = []

    def trials() -> list[optuna.trial.FrozenTrial]:
        if not storage and journal.exists() and journal.stat().st_size:
            storage.append(JournalStorage(JournalFileBackend(str(journal))))
        return trials_of(storage[0], "kill") if storage else []

    killed: list[int] = []

    def ready() -> bool:  # the trials killed last time released, and a new one running
        now = trials()
        released = all(now[n].state == TrialState.FAIL for n in killed)
        fresh = [t for t in now if t.state == TrialState.RUNNING and t.number not in killed]
        return released and bool(fresh) and "worker" in fresh[0].user_attrs

    started: list[subprocess.Popen] = []
    try:
        for cycle in range(3):
            started.append(sweep := subprocess.Popen(command, start_new_session=True))
            wait_for(ready, f"cycle {cycle}: the killed trials released and a new one running")
            os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and both workers, no cleanup
            sweep.wait()
            killed.extend(t.number for t in trials() if t.state == TrialState.RUNNING)
        started.append(final := subprocess.Popen(command, start_new_session=True))
        assert final.wait(timeout=120) == 0
    finally:
        for process in started:  # a failed wait leaves a sweep running
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    every = trials()
    assert counted(every) == 6, [(t.number, t.state, t.user_attrs) for t in every]
    assert not [t for t in every if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    interrupted = [t.number for t in every if t.user_attrs.get("interrupted")]
    assert sorted(interrupted) == sorted(killed) and len(killed) >= 3
    retries = [t.user_attrs.get("retry_of") for t in every]
    assert all(retries.count(n) == 1 for n in killed), "each killed trial is rerun exactly once"


# -- 3. passwords -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://nnlab:{PASSWORD}@127.0.0.1:1/nnlab",  # no driver, no server
        f"mysql+pymysql://nnlab:{PASSWORD}@127.0.0.1:1/nnlab",
        f"sqlite://nnlab:{PASSWORD}@/no/such/dir/x.db",  # the driver's error quotes the URL
        f"nnlab:{PASSWORD}@db.example",  # not a URL at all
    ],
)
def test_storage_passwords_are_never_printed(nnlab, workdir, url):
    result = nnlab("sweep", "optimizer=choice(sgd,adam)", *FAST, "--trials", "1", "--storage", url)
    assert PASSWORD not in result.output
    assert_clear_error(result, ["Cannot open the study storage", "***"])
    assert not (workdir / "outputs" / "sweeps").exists()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:password@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:p%40ss@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:///outputs/x.db", "sqlite:///outputs/x.db"),
        ("user:pa@ss@host", "user:***@host"),
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),  # an unescaped '@'
        ("postgresql://u@host/db?password=pw&ssl=1", "postgresql://u@host/db?password=***&ssl=1"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_scrub_masks_the_password_as_typed_and_decoded():
    url = "postgresql://user:p%40ss-word@host/db"
    text = f"could not connect to {url}: user 'user', password 'p@ss-word' refused (p%40ss-word)"
    assert scrub(text, url) == (
        "could not connect to postgresql://user:***@host/db: user 'user', password '***' "
        "refused (***)"
    )
