"""Shared fixtures: run the real CLI in-process inside a temporary working directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnlab.cli import app
from tests import postgres_server


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, so runs land in <tmp>/outputs/ as they would for a user."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def nnlab(workdir: Path) -> Callable[..., object]:
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL, password included, of a throwaway PostgreSQL server (tests/postgres_server.py)
    shared by the test session and stopped at its end. Without Debian's postgresql package:
    skipped here, but failed under CI (CI set), which installs it, so that CI never skips."""
    try:
        postgres_server.check_available()
    except postgres_server.Unavailable as why:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is needed under CI (.ci/run installs it): {why}")
        pytest.skip(f"PostgreSQL is not installed: {why}")
    with postgres_server.postgres_server() as server:
        yield server.url
