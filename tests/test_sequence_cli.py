"""Recurrent models on sequence data through the CLI (issue 3, LSTM/GRU part)."""

from __future__ import annotations

import pytest
import torch

from nnlab.data.sequences import DigitsSeqDataModule
from nnlab.models.rnn import build_rnn
from tests.helpers import QUICK, assert_clear_error, metrics_of, only_run

SEQ = ["model=rnn", "data=digits_seq"]


@pytest.mark.parametrize(
    "extra",
    [
        ["model.cell=lstm"],
        ["model.cell=gru", "model.bidirectional=true", "norm=layer"],
        ["model.cell=rnn", "activation=relu", "norm=none", "model.layers=1"],
    ],
)
def test_recurrent_cells_train(nnlab, workdir, extra):
    result = nnlab("train", *SEQ, *extra, *QUICK)
    assert result.exit_code == 0, result.output
    metrics = metrics_of(only_run(workdir))
    assert metrics["status"] == "finished"
    assert metrics["test/acc"] > 0.3, "two epochs on digit rows learn well above chance (10%)"
    assert nnlab("eval", "latest").exit_code == 0


def test_digits_seq_matches_the_digits_split():
    dm = DigitsSeqDataModule()
    dm.setup()
    assert dm.input_shape == (8, 8) and dm.num_classes == 10
    assert len(dm.splits["test"][1]) == 270


def test_bidirectional_doubles_the_head_width():
    model = build_rnn((8, 8), 10, cell="gru", hidden=16, layers=2, bidirectional=True)
    assert model.head.in_features == 32
    assert model(torch.randn(3, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=rnn"], ["needs sequence data", "data=digits_seq"]),
        (["model=rnn", "data=digits_seq", "model.cell=lstn"], ["'lstn'", "Did you mean 'lstm'"]),
        (["model=rnn", "data=digits_seq", "model.cell=rnn", "activation=gelu"], ["tanh or"]),
        (["model=cnn", "data=digits_seq"], ["model=cnn needs image data"]),
    ],
)
def test_sequence_input_errors(nnlab, workdir, overrides, expected):
    assert_clear_error(nnlab("train", *QUICK, *overrides), expected)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lstm_and_gru_reach_96_percent_on_digits_seq(nnlab, workdir, cell):
    result = nnlab("train", *SEQ, f"model.cell={cell}", "trainer.enable_progress_bar=false")
    assert result.exit_code == 0, result.output
    assert metrics_of(only_run(workdir))["test/acc"] >= 0.96
