"""`nnlab eval` rebuilds the model from the run's own config and reproduces train's test score."""

from __future__ import annotations

import json
import shutil

from tests.helpers import QUICK, metrics_of, only_run


def test_eval_reproduces_train_test_accuracy(nnlab, workdir):
    assert nnlab("train", "model=cnn", "norm=batch", *QUICK).exit_code == 0
    run = only_run(workdir)
    result = nnlab("eval", str(run))
    assert result.exit_code == 0, result.output
    evaluated = json.loads((run / "eval.json").read_text())
    trained = metrics_of(run)
    assert evaluated["test/acc"] == trained["test/acc"]
    assert evaluated["test/loss"] == trained["test/loss"]
    assert 1 <= evaluated["epoch"] <= 2, "1-based epoch of the best checkpoint"
    assert "test/acc" in result.output


def test_eval_latest_and_by_checkpoint(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    run = only_run(workdir)
    assert nnlab("eval", "latest").exit_code == 0
    by_latest = json.loads((run / "eval.json").read_text())
    assert nnlab("eval", str(run / "checkpoints" / "best.ckpt")).exit_code == 0
    by_ckpt = json.loads((run / "eval.json").read_text())
    assert by_latest["test/acc"] == by_ckpt["test/acc"] == metrics_of(run)["test/acc"]


def test_lone_checkpoint_carries_its_config(nnlab, workdir, tmp_path):
    assert nnlab("train", "model=cnn", *QUICK).exit_code == 0
    run = only_run(workdir)
    lone = tmp_path / "elsewhere"
    lone.mkdir()
    shutil.copy(run / "checkpoints" / "best.ckpt", lone / "model.ckpt")
    result = nnlab("eval", str(lone / "model.ckpt"))
    assert result.exit_code == 0, result.output
    assert json.loads((lone / "eval.json").read_text())["test/acc"] == metrics_of(run)["test/acc"]


def test_eval_override_changes_the_rebuilt_config(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    run = only_run(workdir)
    result = nnlab("eval", "latest", "data.batch_size=7")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["overrides"] == ["data.batch_size=7"]
    assert abs(evaluated["test/acc"] - metrics_of(run)["test/acc"]) < 1e-6


def test_eval_reports_the_test_accuracys_interval(nnlab, workdir):
    assert nnlab("train", *QUICK).exit_code == 0
    result = nnlab("eval", "latest")
    assert result.exit_code == 0, result.output
    scored = json.loads((only_run(workdir) / "eval.json").read_text())
    assert scored["test_samples"] == 270  # 15% of the 1,797 digits
    assert "test/acc 95% CI" in result.output and "(270 samples)" in result.output
