"""Shared fixtures: run the real CLI in-process inside a temporary working directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnlab.cli import app


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
