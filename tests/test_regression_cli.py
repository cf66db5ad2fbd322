"""Sequence regression and forecasting: the adding problem and noisy sines (issue 3)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nnlab.data.sequences import AddingDataModule, SineDataModule
from nnlab.models.rnn import build_rnn
from tests.helpers import QUICK, assert_clear_error, metrics_of, only_run

SMALL_ADDING = ["data=adding", "data.length=12", "data.samples=400"]


def test_adding_targets_are_the_sum_of_the_two_marked_values():
    dm = AddingDataModule(length=20, samples=300)
    dm.setup()
    x, y = dm.splits["train"]
    assert x.shape == (210, 20, 2) and y.shape == (210, 1)
    markers = x[:, :, 1]
    assert torch.all(markers.sum(dim=1) == 2)
    assert torch.all(markers[:, :10].sum(dim=1) == 1), "one marker in each half"
    assert torch.allclose((x[:, :, 0] * markers).sum(dim=1, keepdim=True), y)
    assert dm.kind == "regression" and dm.num_outputs == 1 and not dm.variable_length


def test_generators_are_deterministic_per_seed():
    def data(seed: int) -> torch.Tensor:
        dm = SineDataModule(samples=50, data_seed=seed)
        dm.setup()
        return dm.splits["test"][0]

    assert torch.equal(data(3), data(3))
    assert not torch.equal(data(3), data(4))


def test_variable_length_adding_pads_with_zeros_after_each_length():
    dm = AddingDataModule(length=30, min_length=10, samples=500)
    dm.setup()
    x, y, lengths = dm.splits["train"]
    assert dm.variable_length and 10 <= lengths.min() and lengths.max() <= 30
    assert len(set(lengths.tolist())) > 5
    steps = torch.arange(30)
    padding = steps[None, :] >= lengths[:, None]
    assert torch.all(x[padding] == 0)
    half = lengths // 2
    first = x[:, :, 1].argmax(dim=1)
    assert torch.all(first < half), "the first marker lies in the first half of each sequence"


def test_sine_windows_and_horizon():
    dm = SineDataModule(window=16, horizon=4, samples=100)
    dm.setup()
    x, y = dm.splits["val"]
    assert x.shape == (15, 16, 1) and y.shape == (15, 4) and dm.num_outputs == 4


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_batch_equals_each_sequence_read_alone(cell, bidirectional):
    torch.manual_seed(0)
    model = build_rnn(
        (9, 2), 3, cell=cell, hidden=8, layers=2, norm="layer", bidirectional=bidirectional
    ).eval()
    lengths = torch.tensor([9, 4, 6])
    x = torch.randn(3, 9, 2) * (torch.arange(9)[None, :, None] < lengths[:, None, None])
    batched = model(x, lengths)
    alone = torch.cat([model(x[i : i + 1, : int(n)]) for i, n in enumerate(lengths)])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_adding_trains_evaluates_and_reports_mse(nnlab, workdir):
    result = nnlab("train", "model=rnn", *SMALL_ADDING, *QUICK)
    assert result.exit_code == 0, result.output
    assert "test/mae" in result.output
    run = only_run(workdir)
    metrics = metrics_of(run)
    assert metrics["status"] == "finished"
    assert math.isfinite(metrics["test/loss"]) and 0 < metrics["test/loss"] < 1.0
    assert (run / "checkpoints" / "best.ckpt").exists()
    assert nnlab("eval", "latest").exit_code == 0
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def test_variable_length_sequences_train_packed(nnlab, workdir):
    result = nnlab("train", "model=rnn", *SMALL_ADDING, "data.min_length=6", *QUICK)
    assert result.exit_code == 0, result.output
    assert math.isfinite(metrics_of(only_run(workdir))["test/loss"])


def test_sine_forecasting_with_an_mlp_beats_predicting_zero(nnlab, workdir):
    result = nnlab(
        "train",
        "data=sine",
        "data.samples=2000",
        "trainer.max_epochs=5",
        "trainer.enable_progress_bar=false",
    )
    assert result.exit_code == 0, result.output
    # The series has variance ≈ 0.6 (two sines of amplitude 0.5–1): zero scores about that.
    assert metrics_of(only_run(workdir))["test/loss"] < 0.3


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=mlp", *SMALL_ADDING, "data.min_length=6"], ["only model=rnn", "min_length=null"]),
        (["model=rnn", *SMALL_ADDING, "data.min_length=40"], ["data.min_length=40", "length=12"]),
        (["model=rnn", "data=sine", "data.horizon=0"], ["data.horizon", "at least 1"]),
        (["model=cnn", "data=adding"], ["model=cnn needs image data"]),
    ],
)
def test_regression_input_errors(nnlab, workdir, overrides, expected):
    assert_clear_error(nnlab("train", *QUICK, *overrides), expected)
    assert not (workdir / "outputs" / "runs").exists() or not any(
        (workdir / "outputs" / "runs").iterdir()
    )


MEMORY = ["model=rnn", "data=adding", "model.layers=1", "model.dropout=0"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("length", "cell", "solves"),
    [
        (50, "lstm", True),
        (50, "gru", True),
        (100, "lstm", True),
        (100, "gru", True),
        (100, "rnn", False),
    ],
)
def test_gated_cells_bridge_long_gaps_and_a_plain_rnn_does_not(
    nnlab, workdir, length, cell, solves
):
    # The README's table. At T=50 a plain RNN also gets there here (late, after ~20 epochs);
    # at T=100 it stays at the constant-answer MSE (≈ 0.16) while LSTM and GRU solve it.
    result = nnlab(
        "train",
        *MEMORY,
        f"data.length={length}",
        f"model.cell={cell}",
        "trainer.enable_progress_bar=false",
    )
    assert result.exit_code == 0, result.output
    mse = metrics_of(only_run(workdir))["test/loss"]
    assert (mse < 0.01) == solves, mse
