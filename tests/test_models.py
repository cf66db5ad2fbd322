"""Model builders: shapes, the shared norm/activation factories, residual paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnlab.errors import UserError
from nnlab.models.cnn import build_cnn
from nnlab.models.layers import make_activation, make_norm
from nnlab.models.mlp import build_mlp


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "group", "instance"])
@pytest.mark.parametrize("residual", [False, True])
def test_cnn_every_norm_gives_logits(norm, residual):
    model = build_cnn((3, 16, 16), 5, channels=[8, 16], norm=norm, residual=residual)
    assert model(torch.randn(4, 3, 16, 16)).shape == (4, 5)


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "group"])
def test_mlp_every_norm_gives_logits(norm):
    model = build_mlp((1, 8, 8), 10, hidden=24, depth=3, norm=norm)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_mlp_depth_and_width():
    model = build_mlp((4,), 3, hidden=16, depth=5)
    assert len(model.hidden) == 5
    assert all(layer.linear.out_features == 16 for layer in model.hidden)


def test_mlp_residual_adds_identity_where_widths_match():
    model = build_mlp((4,), 3, hidden=16, depth=3, residual=True)
    assert [layer.residual for layer in model.hidden] == [False, True, True]
    layer = model.hidden[1]
    for p in layer.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 16)
    # With zeroed weights the block adds act(0) = 0 for ReLU: the skip passes x through.
    assert torch.equal(layer(x), x)


def test_group_norm_falls_back_to_a_divisor_of_the_width():
    norm = make_norm("group", (12, 4, 4), groups=8)
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 6


def test_instance_norm_on_a_flat_layer_is_a_clear_error():
    with pytest.raises(UserError, match="model=cnn"):
        make_norm("instance", (16,))


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("sigmoid", nn.Sigmoid),
        ("tanh", nn.Tanh),
        ("relu", nn.ReLU),
        ("leaky_relu", nn.LeakyReLU),
        ("elu", nn.ELU),
        ("gelu", nn.GELU),
    ],
)
def test_activation_factory(kind, cls):
    assert isinstance(make_activation(kind), cls)


def test_unknown_activation_suggests_the_closest():
    with pytest.raises(UserError, match="Did you mean 'gelu'"):
        make_activation("gelo")
