"""`nnlab sweep --storage postgresql://...` against a real, throwaway PostgreSQL server (the
`postgres_url` fixture, tests/postgres_server.py): trials stored in the database, workers on
separate "machines" (processes with their own working directories) sharing one study, a
missing driver named in one line, and the password never in any output or file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from nnlab.errors import UserError
from nnlab.storage_urls import POSTGRES_EXTRA, rdb_url
from tests.helpers import FAST_TRIAL, assert_clear_error
from tests.postgres_server import free_port

FAST = FAST_TRIAL
SPACE = ["optimizer.lr=interval(0.001,0.01)", "--sampler", "random", "--pruner", "none"]


def password_of(url: str) -> str:
    password = make_url(url).password
    assert password and len(password) > 8  # distinctive enough that a match is a leak
    return password


def new_study() -> str:
    """A study name of its own: the tests share one database."""
    return f"s{uuid.uuid4().hex[:10]}"


def fresh_database(url: str) -> str:
    """The URL with a new, empty schema of its own to work in: as a new database would be."""
    import psycopg

    schema = f"t{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return f"{url}?options=-csearch_path%3D{schema}"


def trials_in(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=rdb_url(url)).get_trials()


def leaks(password: str, root: Path, *texts: str) -> list[str]:
    """Where the password shows: in any of the texts, or in any file under root."""
    found = [f"output {i}" for i, text in enumerate(texts) if password in text]
    for path in root.rglob("*"):
        if path.is_file() and password.encode() in path.read_bytes():
            found.append(str(path))
    return found


def test_a_sweep_stores_its_trials_in_postgresql(nnlab, workdir, postgres_url, capfd):
    study = new_study()
    result = nnlab(
        "sweep",
        *SPACE,
        *FAST,
        "--trials",
        "2",
        "--storage",
        postgres_url,
        "--study",
        study,
        "--name",
        "pg",
    )
    assert result.exit_code == 0, result.output
    trials = trials_in(postgres_url, study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(Path(t.user_attrs["run"]).is_dir() for t in trials)
    captured = capfd.readouterr()
    assert "postgresql://nnlab:***@127.0.0.1" in result.output  # the study, named, masked
    assert not leaks(password_of(postgres_url), workdir, result.output, captured.out, captured.err)


def sweep_on_machine(machine: Path, url: str, study: str, trials: int) -> subprocess.Popen:
    """`nnlab sweep` as a separate machine would run it: its own process and working directory
    (so its own outputs/ and locks), the same storage and study."""
    machine.mkdir()
    command = [
        sys.executable,
        "-m",
        "nnlab.cli",
        "sweep",
        *SPACE,
        *FAST,
        "--trials",
        str(trials),
        "--storage",
        url,
        "--study",
        study,
        "--name",
        "shared",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command,
        cwd=machine,
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


# Opening the storage, all at the same moment: Optuna creates its tables unguarded.
RACE = """
import sys, time
import optuna, psycopg, sqlalchemy  # imported before the start: the openings race
from nnlab.rdb_storage import open_rdb
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
open_rdb(sys.argv[1])
"""


def test_machines_may_open_a_fresh_database_at_the_same_moment(postgres_url):
    url, start = fresh_database(postgres_url), time.time() + 4  # after their imports
    opening = [
        subprocess.Popen([sys.executable, "-c", RACE, url, str(start)], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [process.communicate(timeout=60)[1].decode() for process in opening]
    assert [p.returncode for p in opening] == [0] * 4, "\n".join(errors)
    assert optuna.get_all_study_names(rdb_url(url)) == []  # the tables are there, and empty


@pytest.mark.slow  # the default tier has test_sweep_machines.py's PostgreSQL case
def test_two_machines_share_one_study_and_run_exactly_the_trials(tmp_path, postgres_url):
    url, study, total = fresh_database(postgres_url), new_study(), 3
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    workers = [sweep_on_machine(m, url, study, total) for m in machines]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=240)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:  # a timed-out wait leaves it running
                worker.kill()
                worker.wait()
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
    trials = trials_in(url, study)
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE] * total, [(t.number, t.state) for t in trials]
    # Each trial ran once, on one machine, and wrote its run directory there.
    ran = sorted(
        p.name for m in machines for p in (m / "outputs" / "sweeps" / "shared" / "trials").glob("*")
    )
    assert len(ran) == total, ran
    assert not leaks(password_of(postgres_url), tmp_path, *outputs)


@pytest.mark.parametrize("fault", ["wrong password", "server down"])
def test_a_connection_error_never_shows_the_password(nnlab, workdir, postgres_url, capfd, fault):
    url = make_url(postgres_url)
    if fault == "wrong password":
        url = url.set(password="pw-Wrong-" + uuid.uuid4().hex)
    else:
        url = url.set(port=free_port())  # nothing listens there
    typed = url.render_as_string(hide_password=False)
    result = nnlab("sweep", *SPACE, *FAST, "--trials", "1", "--storage", typed)
    assert_clear_error(result, ["Cannot open the study storage", "nnlab:***@127.0.0.1"])
    captured = capfd.readouterr()
    for password in (url.password, password_of(postgres_url)):
        assert not leaks(password, workdir, result.output, captured.out, captured.err)


def test_a_missing_driver_is_one_line_naming_the_extra(nnlab, workdir, monkeypatch):
    for driver in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, driver, None)  # as if not installed: import fails
    url = "postgresql://nnlab:pw-Not-Shown-4711@127.0.0.1:5432/nnlab"
    result = nnlab("sweep", *SPACE, *FAST, "--trials", "1", "--storage", url)
    assert_clear_error(result, [POSTGRES_EXTRA, "psycopg is not installed", "nnlab:***@"])
    assert "pw-Not-Shown-4711" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (workdir / "outputs" / "sweeps").exists(), "nothing written"


@pytest.mark.parametrize(
    ("installed", "url", "opened"),
    [
        (("psycopg", "psycopg2"), "postgresql://u:p@h/d", "postgresql+psycopg://u:p@h/d"),
        (("psycopg2",), "postgresql://u:p@h:5/d?x=1", "postgresql+psycopg2://u:p@h:5/d?x=1"),
        (("psycopg",), "postgresql+psycopg://u:p@h/d", "postgresql+psycopg://u:p@h/d"),
        ((), "postgresql+pg8000://u:p@h/d", "postgresql+pg8000://u:p@h/d"),
        ((), "sqlite:///outputs/x.db", "sqlite:///outputs/x.db"),
        ((), "mysql+pymysql://u:p@h/d", "mysql+pymysql://u:p@h/d"),
    ],
)
def test_a_plain_postgresql_url_opens_with_the_installed_driver(
    monkeypatch, installed, url, opened
):
    for driver in ("psycopg", "psycopg2"):
        present = types.ModuleType(driver) if driver in installed else None
        monkeypatch.setitem(sys.modules, driver, present)
    assert rdb_url(url) == opened


def test_a_url_naming_a_missing_driver_says_which(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(UserError, match="psycopg2 is not installed") as raised:
        rdb_url("postgresql+psycopg2://u:secret-pw@h/d")
    assert "secret-pw" not in str(raised.value) and POSTGRES_EXTRA in str(raised.value)
