"""From-scratch backprop and update rules, and `nnlab check` (issue 5, first part)."""

from __future__ import annotations

import pytest
import torch

from nnlab.models.layers import make_activation
from nnlab.scratch import backprop, optim
from nnlab.scratch.backprop import ACTIVATIONS, COSTS, ScratchMLP, check_backprop
from nnlab.scratch.optim import RULES, check_optim
from tests.helpers import assert_clear_error


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_four_equations_match_autograd(activation, cost):
    errors = check_backprop([7, 6, 5, 4], activation, cost)
    assert len(errors) == 3 and max(errors) < 1e-6


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_hand_written_activations_are_the_library_ones(activation):
    z = torch.linspace(-4, 4, 101, dtype=torch.float64)
    sigma, _ = ACTIVATIONS[activation]
    assert torch.allclose(sigma(z), make_activation(activation).double()(z), atol=1e-12)


def test_gradients_are_not_trivially_zero():
    torch.manual_seed(0)
    weights = [torch.randn(4, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)]
    biases = [torch.zeros(4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
    net = ScratchMLP(weights, biases, "relu", "quadratic")
    x = torch.randn(8, 5, dtype=torch.float64)
    grad_w, grad_b = net.backward(x, torch.eye(3, dtype=torch.float64)[torch.arange(8) % 3])
    assert all(g.abs().sum() > 0 for g in grad_w)


def test_a_wrong_derivative_is_caught(monkeypatch):
    sigma, _ = ACTIVATIONS["tanh"]
    monkeypatch.setitem(backprop.ACTIVATIONS, "tanh", (sigma, lambda z: 1 - torch.tanh(z)))
    assert max(check_backprop([5, 4, 3], "tanh", "quadratic")) > 1e-3


@pytest.mark.parametrize("rule", RULES)
def test_update_rules_match_torch_optim(rule):
    rows = [row for row in check_optim(steps=10) if row.case.startswith(f"{rule}:")]
    assert rows and max(row.error for row in rows) < 1e-6


def test_a_wrong_update_rule_is_caught(monkeypatch):
    step = optim.ScratchOptimizer.step

    def without_weight_decay(self, closure=None):
        for group in self.param_groups:
            group["weight_decay"] = 0.0
        return step(self, closure)

    monkeypatch.setattr(optim.ScratchOptimizer, "step", without_weight_decay)
    rows = check_optim()
    failed = {row.case for row in rows if not row.passed}
    # exactly the cases with weight decay, and every one of them
    assert failed == {row.case for row in rows if "weight_decay" in row.case}
    assert any(case.startswith("sgd:") for case in failed)


def test_check_commands_pass_and_print_per_layer_errors(nnlab, workdir):
    result = nnlab("check", "backprop", "model.hidden=8", "model.depth=3")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "layer 4" in result.output
    # loss=mse is checked both ways: σ outputs (classic) and softmax outputs (nnlab's mse)
    assert result.output.count("softmax_quadratic") == len(ACTIVATIONS)
    assert result.output.count("quadratic") == 2 * len(ACTIVATIONS)
    result = nnlab("check", "optim")
    assert result.exit_code == 0 and "PASS" in result.output and "adam" in result.output


def test_check_backprop_bad_input(nnlab, workdir):
    assert_clear_error(nnlab("check", "backprop", "activation=sigmod"), ["Did you mean 'sigmoid'"])
    assert_clear_error(nnlab("check", "backprop", "model=cnn"), ["checks the MLP"])
