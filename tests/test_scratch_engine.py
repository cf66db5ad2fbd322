"""model.engine=scratch: the MLP trained by the hand-written backprop and update rules."""

from __future__ import annotations

import pytest
import torch

from nnlab.scratch import backprop
from tests.helpers import (
    QUICK,
    all_runs,
    assert_clear_error,
    assert_same_training,
    eval_matches_training,
    metrics_of,
    train_both_engines,
)

PLAIN = ["norm=none", "model.dropout=0", "model.hidden=64", *QUICK]


def _train_both(nnlab, workdir, *overrides: str) -> tuple[dict, dict]:
    return train_both_engines(nnlab, workdir, *PLAIN, *overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ("optimizer=sgd", "loss=cross_entropy", "activation=relu"),
        ("optimizer=momentum", "optimizer.lr=0.2", "loss=mse", "activation=tanh"),
        ("optimizer=adam", "optimizer.weight_decay=1e-3", "activation=gelu"),
        ("optimizer=rmsprop", "optimizer.alpha=0.9", "optimizer.weight_decay=1e-3"),
        ("optimizer=adamw", "optimizer.betas=[0.8,0.99]", "optimizer.weight_decay=0.1"),
    ],
)
def test_scratch_engine_gives_the_autograd_metrics(nnlab, workdir, overrides):
    autograd, scratch = _train_both(nnlab, workdir, *overrides)
    assert_same_training(scratch, autograd, rel=1e-4, acc=0.003)
    assert scratch["test/acc"] > 0.5  # it learned: two epochs take it well past chance (0.1)


def test_scratch_engine_runs_the_hand_written_derivatives(nnlab, workdir, monkeypatch):
    """A wrong σ' in the hand-written code must change the training: proof it is what runs."""
    sigma, _ = backprop.ACTIVATIONS["tanh"]
    monkeypatch.setitem(backprop.ACTIVATIONS, "tanh", (sigma, lambda z: torch.ones_like(z)))
    autograd, scratch = _train_both(nnlab, workdir, "activation=tanh", "optimizer=sgd")
    assert scratch["val/loss"] != pytest.approx(autograd["val/loss"], rel=1e-3)


def test_scratch_run_evaluates_to_the_same_accuracy(nnlab, workdir):
    result = nnlab("train", "model.engine=scratch", *PLAIN)
    assert result.exit_code == 0, result.output
    run = all_runs(workdir)[-1]
    trained = metrics_of(run)
    eval_matches_training(nnlab, run, trained)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.engine=scratch"],
            ["norm=batch", "model.dropout=0.1", "norm=none model.dropout=0"],
        ),
        (
            ["model.engine=scratch", *PLAIN[:2], "optimizer=momentum", "optimizer.nesterov=true"],
            ["SGD", "optimizer.nesterov=true", "optimizer.nesterov=false", "engine=autograd"],
        ),
        (
            ["model.engine=scratch", *PLAIN[:2], "optimizer=rmsprop", "optimizer.momentum=0.5"],
            ["RMSprop", "optimizer.momentum=0.5", "optimizer.momentum=0"],
        ),
        (["model.engine=scratch", *PLAIN[:2], "data=sine"], ["real-valued targets"]),
        (["model.engine=scrach"], ["scrach", "Did you mean 'scratch'"]),
    ],
)
def test_scratch_engine_bad_input(nnlab, workdir, overrides, expected):
    assert_clear_error(nnlab("train", *overrides), expected)
    assert not (workdir / "outputs" / "runs").exists() or not any(
        (workdir / "outputs" / "runs").iterdir()
    )
