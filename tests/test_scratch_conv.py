"""The hand-written convolution and pooling (nnlab/scratch/conv.py) against torch and autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnlab.scratch import conv
from nnlab.scratch.checking import TOLERANCE


def _failing(rows) -> list:
    return [row for row in rows if not row.passed]


def test_check_conv_agrees_with_autograd_on_every_case():
    rows = conv.check_conv()
    assert len(rows) == 4 * len(conv.CONV_CASES)
    assert not _failing(rows), _failing(rows)
    settings = [case.split() for case in {row.case for row in rows}]
    for wanted in ("C=1→", "C=3→", "k=1", "k=3", "k=5", "stride=1", "stride=2", "pad=0", "pad=1"):
        assert any(any(part.startswith(wanted) for part in case) for case in settings), wanted
    assert any("pad=2" in case for case in settings)
    assert {row.param for row in rows} == {"z (forward)", "∂C/∂x", "∂C/∂w", "∂C/∂b"}


def test_check_pool_agrees_with_autograd_on_every_case():
    rows = conv.check_pool(seed=3)
    assert len(rows) == 2 * 2 * len(conv.POOL_CASES)
    assert not _failing(rows), _failing(rows)
    assert {row.case.split()[0] for row in rows} == {"max", "avg"}


def _ignore_stride(real):
    return lambda delta, w, shape, stride, padding: real(delta, w, shape, 1, padding)


def _flip_kernel(real):
    return lambda delta, w, shape, stride, padding: real(
        delta, w.flip(2, 3), shape, stride, padding
    )


def _first_sample_only(real):
    return lambda delta, x, shape, stride, padding: real(delta[:1], x[:1], shape, stride, padding)


@pytest.mark.parametrize(
    ("helper", "wrong", "param"),
    [
        ("input_grad", _ignore_stride, "∂C/∂x"),  # δ scattered as if the stride were 1
        ("input_grad", _flip_kernel, "∂C/∂x"),  # a 180° flip the scatter form does not need
        ("weight_grad", _first_sample_only, "∂C/∂w"),  # not summed over the batch
        ("bias_grad", lambda real: lambda delta: delta.mean(dim=(0, 2, 3)), "∂C/∂b"),
    ],
)
def test_a_wrong_conv_derivative_is_caught(monkeypatch, helper, wrong, param):
    monkeypatch.setattr(conv, helper, wrong(getattr(conv, helper)))
    failing = _failing(conv.check_conv())
    assert failing and {row.param for row in failing} == {param}
    assert max(row.error for row in failing) >= TOLERANCE


def _all_cases() -> set[str]:
    return {row.case for row in conv.check_conv()}


def test_a_wrong_stride_is_caught_only_by_the_strided_cases(monkeypatch):
    monkeypatch.setattr(conv, "input_grad", _ignore_stride(conv.input_grad))
    failing = {row.case for row in _failing(conv.check_conv())}
    assert failing == {case for case in _all_cases() if "stride=2" in case}


def test_a_wrong_max_routing_is_caught(monkeypatch):
    """δ sent to the window's next pixel instead of its maximum (an off-by-one in the mask)."""
    real = conv.max_pool2d_backward

    def next_pixel(delta, winner, shape, kernel, stride=None):
        return real(delta, (winner + 1) % (kernel * kernel), shape, kernel, stride)

    monkeypatch.setattr(conv, "max_pool2d_backward", next_pixel)
    failing = _failing(conv.check_pool())
    assert failing and all(row.case.startswith("max") for row in failing)
    assert {row.param for row in failing} == {"∂C/∂x"}


def test_a_wrong_average_spread_is_caught(monkeypatch):
    """δ copied to every pixel of the window, without the 1/k²."""
    real = conv.avg_pool2d_backward

    def no_average(delta, shape, kernel, stride=None):
        return real(delta * kernel * kernel, shape, kernel, stride)

    monkeypatch.setattr(conv, "avg_pool2d_backward", no_average)
    failing = _failing(conv.check_pool())
    assert failing and all(row.case.startswith("avg") for row in failing)


@pytest.mark.parametrize(("kernel", "stride"), [(2, 2), (3, 1), (2, 1)])
def test_max_pool_ties_go_to_the_first_maximum_as_in_torch(kernel, stride):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (2, 2, 6, 7), generator=gen).double()  # windows full of ties
    delta = torch.randn(2, 2, *conv.max_pool2d_forward(x, kernel, stride)[0].shape[2:])
    mine = x.clone().requires_grad_(True)
    (conv.MaxPool2dFunction.apply(mine, kernel, stride) * delta).sum().backward()
    reference = x.clone().requires_grad_(True)
    (F.max_pool2d(reference, kernel, stride) * delta).sum().backward()
    assert torch.equal(mine.grad, reference.grad)


def test_max_pool_passes_a_nan_on_as_torch_does():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    z, _ = conv.max_pool2d_forward(x, 2)
    torch.testing.assert_close(z, F.max_pool2d(x, 2), equal_nan=True)


def test_a_kernel_larger_than_the_input_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        conv.conv2d_forward(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 5, 5), None)


class _TorchNet(nn.Module):
    """conv(same) → relu → max pool → strided conv (no bias) → avg pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 4, padding="same")
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        return self.head(F.avg_pool2d(self.conv2(x), 2, 1).flatten(1))


def _scratch_forward(net: _TorchNet, x):
    """The same network on the hand-written passes, sharing net's parameters."""
    z = conv.Conv2dFunction.apply(x, net.conv1.weight, net.conv1.bias, 1, conv.same_padding(4))
    z = conv.MaxPool2dFunction.apply(torch.relu(z), 2, None)
    z = conv.Conv2dFunction.apply(z, net.conv2.weight, None, 2, 1)
    return net.head(conv.AvgPool2dFunction.apply(z, 2, 1).flatten(1))


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_a_network_on_the_functions_gets_the_torch_gradients(dtype, tolerance):
    torch.manual_seed(0)
    net = _TorchNet().to(dtype)
    x, target = torch.randn(4, 3, 11, 10, dtype=dtype), torch.tensor([0, 1, 2, 1])
    grads = []
    for forward in (net.forward, lambda x: _scratch_forward(net, x)):
        net.zero_grad()
        leaf = x.clone().requires_grad_(True)
        F.cross_entropy(forward(leaf), target).backward()
        grads.append([leaf.grad, *(p.grad.clone() for p in net.parameters())])
    for mine, reference in zip(grads[1], grads[0], strict=True):
        assert mine.dtype == dtype
        torch.testing.assert_close(mine, reference, rtol=tolerance, atol=tolerance)


def test_the_functions_pass_gradcheck():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: conv.Conv2dFunction.apply(*t, 2, 1), (x, w, b))
    assert torch.autograd.gradcheck(lambda t: conv.MaxPool2dFunction.apply(t, 2, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: conv.AvgPool2dFunction.apply(t, 3, 2), (x,))
