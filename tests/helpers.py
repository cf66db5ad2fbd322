"""Small helpers the tests share."""

from __future__ import annotations

import json
from pathlib import Path

# A couple of real epochs on the digits: enough to learn, fast enough for the default tier.
QUICK = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
# One epoch of two batches: a sweep trial that trains for real in about a second, for tests that
# are about the sweep or its storage rather than the training.
FAST_TRIAL = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "model.hidden=32",
]


def all_runs(workdir: Path) -> list[Path]:
    return sorted((workdir / "outputs" / "runs").iterdir())


def only_run(workdir: Path) -> Path:
    runs = all_runs(workdir)
    assert len(runs) == 1, runs
    return runs[0]


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def assert_clear_error(result, expected: list[str], exit_code: int = 2) -> None:
    """Exit code 2 (bad input; 1 for a write the machine refused), every expected fragment in
    the (re-wrapped) message, no traceback."""
    assert result.exit_code == exit_code, result.output
    message = " ".join(result.output.split())
    for fragment in expected:
        assert fragment in message
    assert "Traceback" not in result.output


def train_both_engines(nnlab, workdir: Path, *overrides: str) -> tuple[dict, dict]:
    """Metrics of the same run on model.engine=autograd, then on model.engine=scratch."""
    for engine in ("autograd", "scratch"):
        result = nnlab("train", f"model.engine={engine}", *overrides)
        assert result.exit_code == 0, result.output
    autograd, scratch = all_runs(workdir)[-2:]
    assert "model.engine=scratch" in (scratch / "overrides.yaml").read_text()
    return metrics_of(autograd), metrics_of(scratch)


def assert_same_training(scratch: dict, autograd: dict, rel: float, acc: float) -> None:
    """Two engines' metrics of one run: losses within `rel`, accuracies at most `acc` apart
    (one sample of the digits' 270-sample val and test splits)."""
    for key in ("train/loss", "val/loss", "test/loss"):
        assert abs(scratch[key] - autograd[key]) <= rel * abs(autograd[key]), key
    for key in ("train/acc", "val/acc", "test/acc"):
        assert abs(scratch[key] - autograd[key]) <= acc, key


def eval_matches_training(nnlab, run: Path, trained: dict) -> None:
    """`nnlab eval` of a finished run scores its test split exactly as training did."""
    result = nnlab("eval", str(run))
    assert result.exit_code == 0, result.output
    evaluated = json.loads((run / "eval.json").read_text())
    assert abs(evaluated["test/acc"] - trained["test/acc"]) < 1e-9
