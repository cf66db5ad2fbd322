"""Batch norm, layer norm and the residual block by hand (issue 25): checked against autograd
and torch's layers, and every deliberately wrong derivative caught."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnlab.scratch import backprop, norm
from nnlab.scratch.checking import TOLERANCE
from nnlab.scratch.norm import ScratchBatchNorm, ScratchLayerNorm, check_batchnorm, check_layernorm
from nnlab.scratch.residual import (
    ResidualFunction,
    check_residual,
    residual_backward,
    residual_forward,
)

CHECKS = {"batchnorm": check_batchnorm, "layernorm": check_layernorm, "residual": check_residual}


def _failing(rows) -> set[tuple[str, str]]:
    return {(r.case, r.param) for r in rows if not r.passed}


@pytest.mark.parametrize("topic", CHECKS)
def test_hand_written_passes_match_autograd(topic):
    rows = CHECKS[topic](seed=3)
    assert rows and all(r.passed for r in rows), [r for r in rows if not r.passed]
    assert all(r.error >= 0 for r in rows)


def test_checks_cover_the_shapes_and_parameters():
    batch = check_batchnorm()
    cases = {r.case for r in batch}
    assert sum("H=" in c for c in cases) >= 2 and sum("H=" not in c for c in cases) >= 2
    assert len({c.split()[0] for c in cases}) >= 3  # several N
    wanted = {"∂C/∂x", "∂C/∂γ", "∂C/∂β", "running_mean (3 steps)", "running_var (3 steps)"}
    assert wanted <= {r.param for r in batch}
    assert {"over last 1", "over last 3"} <= {r.case[-11:] for r in check_layernorm()}
    res = check_residual()
    assert {r.case.split()[0] for r in res} == {"tanh", "relu"}
    assert {"∂C/∂x", "∂C/∂W₁", "∂C/∂b₁", "∂C/∂W₂", "∂C/∂b₂"} <= {r.param for r in res}


def _without_mean_term(g_hat, x_hat, inv_std, dims):
    """Forgets that μ depends on x: drops −Σĝ."""
    sum_gx = (g_hat * x_hat).sum(dim=dims, keepdim=True)
    return inv_std * (g_hat - x_hat * sum_gx / (x_hat.numel() // inv_std.numel()))


def _without_variance_term(g_hat, x_hat, inv_std, dims):
    """Forgets that σ² depends on x: drops −x̂ Σ(ĝ x̂)."""
    return inv_std * (g_hat - g_hat.mean(dim=dims, keepdim=True))


@pytest.mark.parametrize("wrong", [_without_mean_term, _without_variance_term])
@pytest.mark.parametrize("topic", ["batchnorm", "layernorm"])
def test_a_wrong_normalization_derivative_is_caught(monkeypatch, topic, wrong):
    monkeypatch.setattr(norm, "normalize_backward", wrong)
    rows = CHECKS[topic]()
    failing = _failing(rows)
    cases = {r.case for r in rows if r.param == "∂C/∂x"}
    assert {(case, "∂C/∂x") for case in cases} <= failing
    assert all(param == "∂C/∂x" for _, param in failing)  # γ, β, y still right
    assert max(r.error for r in rows) >= TOLERANCE


def test_a_biased_running_variance_is_caught(monkeypatch):
    """torch keeps the unbiased variance (÷ m−1) in running_var; the batch's own ÷ m is wrong."""

    def biased(x):
        dims = norm._batch_dims(x)
        return ((x - x.mean(dim=dims, keepdim=True)) ** 2).mean(dim=dims)

    monkeypatch.setattr(norm, "unbiased_variance", biased)
    failing = _failing(check_batchnorm())
    assert {param for _, param in failing} >= {"running_var (3 steps)"}
    # the running stats feed eval mode only: training mode and running_mean stay right
    assert all(param.startswith("running_var") or "eval" in param for _, param in failing)


def test_a_wrong_eval_derivative_is_caught(monkeypatch):
    """Eval mode treats the running statistics as constants: the training formula is wrong."""
    monkeypatch.setattr(norm, "batchnorm_eval_backward", norm.batchnorm_backward)
    failing = _failing(check_batchnorm())
    assert failing and {param for _, param in failing} == {"∂C/∂x (eval)"}


def test_a_wrong_activation_derivative_in_the_residual_block_is_caught(monkeypatch):
    sigma, _ = backprop.ACTIVATIONS["tanh"]
    monkeypatch.setitem(backprop.ACTIVATIONS, "tanh", (sigma, lambda z: torch.ones_like(z)))
    failing = _failing(check_residual())
    assert {case.split()[0] for case, _ in failing} == {"tanh"}  # relu cases untouched
    assert {param for _, param in failing} == {"∂C/∂x", "∂C/∂W₁", "∂C/∂b₁"}


def test_residual_block_rejects_an_unknown_activation():
    x = torch.zeros(2, 3, dtype=torch.float64)
    w, b = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    with pytest.raises(Exception, match="sigmod.*sigmoid"):
        residual_forward(x, w, b, w, b, "sigmod")


def test_the_skip_keeps_the_gradient_from_vanishing():
    """∂y/∂x = I + ∂F/∂x: through 30 sigmoid blocks the gradient keeps its size with the skip
    and all but vanishes without it (σ' ≤ 1/4 at every layer)."""
    gen = torch.Generator().manual_seed(0)
    d, depth = 8, 30
    blocks = [
        [torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5 for _ in range(2)]
        for _ in range(depth)
    ]
    bias = torch.zeros(d, dtype=torch.float64)
    x = torch.randn(4, d, generator=gen, dtype=torch.float64)
    caches = []
    for w1, w2 in blocks:
        y, z1, a1 = residual_forward(x, w1, bias, w2, bias, "sigmoid")
        caches.append((x, z1, a1))
        x = y
    delta = torch.ones_like(x)
    with_skip, without_skip = delta, delta
    for (w1, w2), (x_in, z1, a1) in zip(reversed(blocks), reversed(caches), strict=True):
        with_skip = residual_backward(with_skip, x_in, z1, a1, w1, w2, "sigmoid")[0]
        # the block alone: ∂C/∂x minus the identity's δ
        through = residual_backward(without_skip, x_in, z1, a1, w1, w2, "sigmoid")[0]
        without_skip = through - without_skip
    assert with_skip.norm() > 0.5 * delta.norm()
    assert without_skip.norm() < 1e-6 * delta.norm()


def _pair_of_nets(dtype: torch.dtype) -> tuple[nn.Sequential, nn.Sequential]:
    """The same small CNN twice: torch's norms, then the hand-written ones, same weights."""
    torch.manual_seed(0)

    def make(batch_norm, layer_norm) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(2, 3, 3), batch_norm(3), nn.ReLU(), nn.Flatten(),
            nn.Linear(3 * 4 * 4, 5), layer_norm(5), nn.Tanh(), nn.Linear(5, 4), nn.BatchNorm1d(4)
        ).to(dtype)  # fmt: skip

    reference = make(nn.BatchNorm2d, nn.LayerNorm)
    with torch.no_grad():  # γ, β away from their 1, 0 start, so their gradients are tested
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d | nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    scratch = make(ScratchBatchNorm, ScratchLayerNorm)
    scratch[-1] = ScratchBatchNorm(4).to(dtype)
    scratch.load_state_dict(reference.state_dict())  # same names: a drop-in replacement
    return reference, scratch


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_layers_give_torch_gradients_running_stats_and_eval(dtype, tol):
    reference, scratch = _pair_of_nets(dtype)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(6, 2, 6, 6, generator=gen).to(dtype) * 2 + 1
        grads = []
        for net in (reference, scratch):
            leaf = x.clone().requires_grad_(True)
            net.zero_grad()
            (net(leaf) ** 2).sum().backward()
            grads.append([leaf.grad] + [p.grad for p in net.parameters()])
        for mine, theirs in zip(grads[1], grads[0], strict=True):
            assert mine.dtype == dtype
            assert torch.allclose(mine, theirs, rtol=tol, atol=tol)
    for name, buffer in reference.state_dict().items():
        assert torch.allclose(scratch.state_dict()[name], buffer, rtol=tol, atol=tol), name
    x = torch.randn(5, 2, 6, 6, generator=gen).to(dtype)
    assert torch.allclose(scratch.eval()(x), reference.eval()(x), rtol=tol, atol=tol)


def test_layers_run_the_hand_written_backward(monkeypatch):
    """A wrong derivative in norm.py changes the layers' gradients: proof it is what runs."""
    reference, scratch = _pair_of_nets(torch.float64)
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
    for net in (reference, scratch):
        (net(x) ** 2).sum().backward()
    weight = scratch[0].weight.grad.clone()
    assert torch.allclose(weight, reference[0].weight.grad)
    monkeypatch.setattr(norm, "normalize_backward", _without_variance_term)
    scratch.zero_grad()
    (scratch(x) ** 2).sum().backward()
    assert not torch.allclose(scratch[0].weight.grad, weight, rtol=1e-3)


@pytest.mark.parametrize("activation", ["gelu", "sigmoid"])
def test_residual_layer_gives_torch_gradients(activation):
    """Two blocks through ResidualFunction vs the same blocks in torch layers, float32."""
    torch.manual_seed(0)
    blocks = [(nn.Linear(6, 9), nn.Linear(9, 6)) for _ in range(2)]
    act = {"gelu": nn.GELU(), "sigmoid": nn.Sigmoid()}[activation]
    x = torch.randn(5, 6)
    reference = x
    for first, second in blocks:
        reference = reference + second(act(first(reference)))
    (reference**2).sum().backward()
    expected = [p.grad.clone() for pair in blocks for layer in pair for p in layer.parameters()]
    for pair in blocks:
        for layer in pair:
            layer.zero_grad()
    mine = x
    for first, second in blocks:
        mine = ResidualFunction.apply(
            mine, first.weight, first.bias, second.weight, second.bias, activation
        )
    (mine**2).sum().backward()
    got = [p.grad for pair in blocks for layer in pair for p in layer.parameters()]
    assert torch.allclose(mine, reference, atol=1e-5)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32 and torch.allclose(g, e, rtol=1e-4, atol=1e-5)


def test_cli_check_fails_on_a_wrong_derivative(nnlab, monkeypatch):
    """What a learner sees: `nnlab check batchnorm` passes, and exits 1 on a broken backward."""
    result = nnlab("check", "batchnorm")
    assert result.exit_code == 0, result.output
    assert "running_var" in result.output and "PASS" in result.output
    monkeypatch.setattr(norm, "normalize_backward", _without_mean_term)
    result = nnlab("check", "batchnorm")
    assert result.exit_code == 1 and "FAIL" in result.output
