"""`nnlab compare` (issue 22): differing settings, final metrics side by side, one overlay."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import all_runs, assert_clear_error, metrics_of

RUN = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs that differ only in optimizer.lr, trained once for the module."""
    from typer.testing import CliRunner

    from nnlab.cli import app

    root = tmp_path_factory.mktemp("compare")
    for lr in ("0.001", "0.01"):
        arguments = ["train", *RUN, f"optimizer.lr={lr}", f"output_dir={root / 'outputs'}"]
        result = CliRunner().invoke(app, arguments, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def runs_here(trained: Path, workdir: Path) -> list[Path]:
    """A copy of the two runs in this test's working directory, oldest first."""
    shutil.copytree(trained / "outputs", workdir / "outputs")
    return all_runs(workdir)


def test_compare_shows_what_differs_the_metrics_and_writes_the_overlay(nnlab, runs_here):
    slow, fast = runs_here
    result = nnlab("compare", str(slow), "latest", "--out", "figures/lr.png")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    tables = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert tables and max(len(line) for line in tables) <= 80, "fits an 80-column terminal"
    (lr_row,) = [line for line in lines if "optimizer.lr" in line]
    assert lr_row.index("0.001") < lr_row.index("0.01"), "the runs' values in the order given"
    assert not [line for line in lines if "trainer.max_epochs" in line], "the same in both"
    for run in (slow, fast):
        assert run.name in result.output
    (acc_row,) = [line for line in lines if "test/acc" in line]
    acc = [f"{metrics_of(run)['test/acc']:.4f}" for run in (slow, fast)]
    assert acc_row.index(acc[0]) < acc_row.rindex(acc[1])
    figure = Path("figures/lr.png")
    assert "val/acc" in result.output and str(figure) in result.output
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 400
        image.verify()


def test_a_run_without_metrics_csv_is_compared_on_final_metrics(nnlab, runs_here):
    old, new = runs_here
    (old / "metrics.csv").unlink()  # as a run from before nnlab wrote one
    result = nnlab("compare", str(old), str(new))
    assert result.exit_code == 0, result.output
    message = " ".join(result.output.split())
    assert "has no metrics.csv" in message and "final metrics only" in message
    assert "test/acc" in message and Path("outputs/compare.png").exists()
    (new / "metrics.csv").unlink()
    Path("outputs/compare.png").unlink()
    result = nnlab("compare", str(old), str(new))
    assert result.exit_code == 0, result.output
    assert "No run has a metrics.csv" in " ".join(result.output.split())
    assert not Path("outputs/compare.png").exists()


def test_compare_refuses_unknown_runs_naming_them(nnlab, runs_here):
    assert_clear_error(nnlab("compare", "latest", "nope"), ["'nope' is not a run directory"])
    assert_clear_error(nnlab("compare", "nope", "latest", "nada"), ["'nope', 'nada'"])
    assert_clear_error(nnlab("compare", "latest"), ["at least two runs"])
    assert_clear_error(nnlab("compare", "latest", str(runs_here[-1])), ["the same run"])
    assert_clear_error(
        nnlab("compare", str(runs_here[0]), "latest", "--out", "c.jpg"),
        ["'.jpg'", ".pdf, .png, .svg"],
    )
    assert not Path("outputs/compare.png").exists(), "a refused compare writes nothing"
