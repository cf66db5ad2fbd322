"""model=rnn model.engine=scratch: LSTM and GRU trained through the hand-written BPTT."""

from __future__ import annotations

import pytest
import torch

from nnlab.scratch import gated, optim
from tests.helpers import (
    QUICK,
    all_runs,
    assert_clear_error,
    assert_same_training,
    eval_matches_training,
    metrics_of,
    train_both_engines,
)

RNN = ["model=rnn", "data=digits_seq", "model.dropout=0", "model.hidden=16", *QUICK]


def _train_both(nnlab, workdir, *overrides: str) -> tuple[dict, dict]:
    return train_both_engines(nnlab, workdir, *RNN, *overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.cell=lstm", "model.layers=1", "norm=none", "optimizer.lr=0.01"),
        ("model.cell=gru", "model.layers=2", "norm=layer", "optimizer=sgd", "optimizer.lr=0.3"),
        (
            "model.cell=lstm",
            "model.layers=2",
            "norm=batch",
            "model.bidirectional=true",
            "optimizer.lr=0.01",
        ),
        ("model.cell=gru", "model.layers=1", "norm=none", "loss=mse", "optimizer=momentum"),
        ("model.cell=rnn", "model.layers=2", "norm=layer", "activation=tanh", "optimizer=sgd"),
        ("model.cell=rnn", "activation=relu", "model.bidirectional=true", "norm=none"),
    ],
)
def test_scratch_rnn_gives_the_autograd_metrics(nnlab, workdir, overrides):
    autograd, scratch = _train_both(nnlab, workdir, *overrides)
    assert_same_training(scratch, autograd, rel=1e-4, acc=0.004)
    assert scratch["test/acc"] > 0.2  # it learned: chance is 0.1


def test_scratch_rnn_runs_the_hand_written_bptt(nnlab, workdir, monkeypatch):
    """A wrong σ' in gated.py must change the training: proof BPTT by hand is what runs."""
    monkeypatch.setattr(gated, "sigmoid_prime", lambda s: torch.ones_like(s))
    autograd, scratch = _train_both(
        nnlab, workdir, "model.layers=1", "norm=none", "optimizer.lr=0.01"
    )
    assert scratch["val/loss"] != pytest.approx(autograd["val/loss"], rel=1e-3)


def test_scratch_rnn_trains_with_the_hand_written_update_rule(nnlab, workdir, monkeypatch):
    """The hand-written optimizer steps the RNN too: a wrong Adam changes the training."""
    monkeypatch.setitem(optim.UPDATES, "adam", optim.UPDATES["sgd"])
    autograd, scratch = _train_both(
        nnlab, workdir, "model.layers=1", "norm=none", "optimizer.lr=0.01"
    )
    assert scratch["val/loss"] != pytest.approx(autograd["val/loss"], rel=1e-3)


def test_plain_cell_matches_torch_and_a_wrong_derivative_is_caught(monkeypatch):
    """The hand-written Elman cell (what model.cell=rnn trains with) against nn.RNN."""
    rows = gated.check_rnn()
    assert rows and all(row.passed for row in rows)
    assert {row.case.split()[-1] for row in rows} == {"tanh", "relu"}
    monkeypatch.setattr(gated, "tanh_prime", lambda t: 1 - t)  # tanh' wrongly from t
    failed = {row.case.split()[-1] for row in gated.check_rnn() if not row.passed}
    assert failed == {"tanh"}


def test_scratch_rnn_run_evaluates_to_the_same_accuracy(nnlab, workdir):
    result = nnlab("train", "model.engine=scratch", *RNN, "model.layers=2", "norm=layer")
    assert result.exit_code == 0, result.output
    run = all_runs(workdir)[-1]
    trained = metrics_of(run)
    eval_matches_training(nnlab, run, trained)


def test_scratch_rnn_has_the_autograd_parameter_names():
    """A checkpoint moves between the engines: same names, shapes and, for one seed, values."""
    from nnlab.models.rnn import build_rnn

    settings = {"layers": 2, "bidirectional": True, "dropout": 0.0, "norm": "batch"}
    torch.manual_seed(0)
    autograd = build_rnn((8, 8), 10, **settings).state_dict()
    torch.manual_seed(0)
    scratch = build_rnn((8, 8), 10, engine="scratch", **settings).state_dict()
    assert list(scratch) == list(autograd)
    assert all(torch.equal(scratch[k], autograd[k]) for k in autograd)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.engine=scratch", "model=rnn", "data=digits_seq"],  # norm=batch is fine
            ["model.dropout=0.1", "model.dropout=0", "model.engine=autograd"],
        ),
        (
            ["model.engine=scratch", *RNN[:4], "norm=group"],
            ["norm=group", "norm=none (or layer, batch)", "model.engine=autograd"],
        ),
        (["model.engine=scratch", *RNN, "data=sine"], ["real-valued targets"]),
        (["model.engine=scrach", *RNN[:3]], ["scrach", "Did you mean 'scratch'"]),
    ],
)
def test_scratch_rnn_bad_input(nnlab, workdir, overrides, expected):
    assert_clear_error(nnlab("train", *overrides), expected)
    runs = workdir / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir())
