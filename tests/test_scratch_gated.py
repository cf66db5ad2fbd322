"""LSTM and GRU through time by hand (issue 25): the checks, a wrong derivative caught, and the
autograd.Function wrappers against torch.nn.LSTM / torch.nn.GRU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnlab.scratch import gated
from nnlab.scratch.checking import TOLERANCE

CHECKS = {"lstm": gated.check_lstm, "gru": gated.check_gru}


@pytest.mark.parametrize("cell", CHECKS)
def test_bptt_matches_torch_for_every_gradient(cell):
    rows = CHECKS[cell]()
    states = ["h0", "c0"] if cell == "lstm" else ["h0"]
    expected = {"forward: h_t and final states", "∂C/∂x", *(f"∂C/∂{s}" for s in states)}
    expected |= {f"∂C/∂{p}" for p in gated.PARAMS}
    assert {row.param for row in rows} == expected
    assert {row.case for row in rows} >= {"N=2 T=1 I=3 H=4", "N=4 T=12 I=1 H=5"}
    assert len(rows) == len(expected) * len(gated.CASES)
    assert all(row.passed for row in rows), [r for r in rows if not r.passed]


@pytest.mark.parametrize("cell", CHECKS)
@pytest.mark.parametrize(
    ("helper", "wrong"),
    [
        ("sigmoid_prime", lambda s: s * (1 + s)),  # σ(1 + σ): a sign slip
        ("tanh_prime", lambda t: 1 - t),  # forgot the square
    ],
)
def test_a_wrong_derivative_is_caught(monkeypatch, cell, helper, wrong):
    monkeypatch.setattr(gated, helper, wrong)
    rows = CHECKS[cell]()
    assert max(row.error for row in rows) >= TOLERANCE
    # the forward pass does not use the derivatives: only gradients fail
    assert all(row.passed for row in rows if row.param.startswith("forward"))


def test_the_long_memory_path_is_checked(monkeypatch):
    """Cut ∂C/∂c_{t−1} = ∂C/∂c_t ⊙ f (as if c did not carry over): c0's gradient goes wrong."""
    forward = gated.lstm_forward

    def cut_memory(x, h0, c0, *params):
        out, h_n, c_n, cache = forward(x, h0, c0, *params)
        i, f, g, o = cache.gates.chunk(4, dim=2)
        gates = torch.cat([i, torch.zeros_like(f), g, o], dim=2)  # backward sees f = 0
        return out, h_n, c_n, cache._replace(gates=gates)

    monkeypatch.setattr(gated, "lstm_forward", cut_memory)
    failed = {row.param for row in gated.check_lstm() if not row.passed}
    assert "∂C/∂c0" in failed


def _same_parameters(torch_rnn: nn.Module) -> list[torch.Tensor]:
    return [getattr(torch_rnn, name).detach().clone().requires_grad_(True) for name in gated.PARAMS]


def _gradients(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def test_lstm_function_trains_like_nn_lstm():
    """A small classifier on h_T, float32: the hand-written BPTT gives nn.LSTM's gradients."""
    torch.manual_seed(0)
    lstm, head = nn.LSTM(3, 5, batch_first=True), nn.Linear(5, 4)
    x = torch.randn(6, 7, 3, requires_grad=True)
    target = torch.randint(0, 4, (6,))
    zeros = torch.zeros(6, 5)

    _, (h_n, _) = lstm(x)
    reference = _gradients(
        nn.functional.cross_entropy(head(h_n[0]), target), [x, *lstm.parameters()]
    )

    params = _same_parameters(lstm)
    out, h_last, _ = gated.LSTMFunction.apply(x, zeros, zeros, *params)
    assert out.dtype == torch.float32 and out.shape == (6, 7, 5)
    mine = _gradients(nn.functional.cross_entropy(head(h_last), target), [x, *params])
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gru_function_trains_like_nn_gru():
    """A regression on every step's h_t, float32: the hand-written BPTT gives nn.GRU's gradients."""
    torch.manual_seed(1)
    gru, head = nn.GRU(2, 4, batch_first=True), nn.Linear(4, 1)
    x = torch.randn(5, 9, 2, requires_grad=True)
    h0 = torch.randn(5, 4, requires_grad=True)
    target = torch.randn(5, 9, 1)

    out, _ = gru(x, h0.unsqueeze(0))
    loss = nn.functional.mse_loss(head(out), target)
    reference = _gradients(loss, [x, h0, *gru.parameters()])

    params = _same_parameters(gru)
    out, _ = gated.GRUFunction.apply(x, h0, *params)
    mine = _gradients(nn.functional.mse_loss(head(out), target), [x, h0, *params])
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_functions_pass_finite_differences(cell):
    """Independent of torch's cells: gradcheck's numerical derivatives, in float64."""
    gen = torch.Generator().manual_seed(2)
    gates, function = (4, gated.LSTMFunction) if cell == "lstm" else (3, gated.GRUFunction)
    states = 2 if cell == "lstm" else 1

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)

    inputs = (
        rand(2, 4, 3),
        *(rand(2, 3) for _ in range(states)),
        rand(gates * 3, 3),
        rand(gates * 3, 3),
        rand(gates * 3),
        rand(gates * 3),
    )
    assert torch.autograd.gradcheck(function.apply, inputs)
