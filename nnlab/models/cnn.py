"""Convolutional network builder: conv stages with pooling, then fully connected layers.

One builder for (C, H, W) images and (C, L) signals: the same units, in 2-D or 1-D.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from nnlab.errors import UserError
from nnlab.models.layers import make_activation, make_norm

BUILDER = "nnlab.models.cnn.build_cnn"  # the _target_ that builds this network
# Spatial axes per sample → the convolution and pooling classes that run over them.
CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d}
POOLS: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d}


def _conv(cin: int, cout: int, kernel: int, dims: int, bias: bool = True) -> nn.Module:
    """A size-preserving convolution over `dims` spatial axes. An even kernel needs one more
    padding on one side than the other, which only torch's "same" does (k // 2 on both sides
    would grow the output by one, and the classifier's input size would not match)."""
    padding = kernel // 2 if kernel % 2 else "same"
    return CONVS[dims](cin, cout, kernel, padding=padding, bias=bias)


class ConvUnit(nn.Sequential):
    """conv → norm → activation, size-preserving; `spatial` is the (H, W) or (L,) it runs over."""

    def __init__(
        self,
        cin: int,
        cout: int,
        spatial: tuple[int, ...],
        kernel: int,
        norm: str,
        groups: int,
        act: str,
    ) -> None:
        super().__init__(
            _conv(cin, cout, kernel, len(spatial), bias=norm == "none"),
            make_norm(norm, (cout, *spatial), groups),
            make_activation(act),
        )


class ResidualBlock(nn.Module):
    """Two conv units with an identity skip: the gradient has a path around both."""

    def __init__(
        self, channels: int, spatial: tuple[int, ...], kernel: int, norm: str, groups: int, act: str
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvUnit(channels, channels, spatial, kernel, norm, groups, act),
            _conv(channels, channels, kernel, len(spatial)),
        )
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


def _spatial_axes(input_shape: tuple[int, ...], signal: bool) -> tuple[int, ...]:
    """The (H, W) or (L,) of the input; UserError for a shape the CNN cannot read."""
    shape = tuple(input_shape)
    if len(shape) == 3 or (signal and len(shape) == 2):
        return shape[1:]
    raise UserError(
        f"model=cnn needs image data shaped (channels, height, width), or signals shaped "
        f"(channels, length) from data=arrays, but this dataset gives inputs of shape {shape}. "
        f"Use model=mlp, which reads any shape (or model=rnn for sequences), or an image "
        f"dataset (digits, mnist, fashion_mnist, cifar10, image_folder)."
    )


def build_cnn(
    input_shape: tuple[int, ...],
    num_outputs: int,
    channels: list[int] = (32, 64, 128),
    kernel_size: int = 3,
    residual: bool = False,
    fc_hidden: int = 128,
    dropout: float = 0.25,
    norm: str = "batch",
    norm_groups: int = 8,
    activation: str = "relu",
    signal: bool = False,
) -> nn.Sequential:
    """A CNN for (C, H, W) images, or for (C, L) signals when `signal` (2-D samples are
    otherwise (time steps, features) sequences, which a CNN does not read): each stage is conv
    (+ residual block) then max-pooling by 2 along every spatial axis.
    The defaults are conf/model/cnn.yaml's under train.yaml's norm= and activation=."""
    spatial = _spatial_axes(input_shape, signal)
    if min(spatial) >> len(channels) < 1:
        what = "signals are only {} long" if len(spatial) == 1 else "images are only {}×{}"
        raise UserError(
            f"model.channels has {len(channels)} stages, and each halves the input, but the "
            f"{what.format(*spatial)}: use at most {min(spatial).bit_length() - 1} stages "
            f"(for example model.channels=[32,64])."
        )
    if kernel_size > min(spatial):
        what = "signals {} long" if len(spatial) == 1 else "{}×{} images"
        raise UserError(
            f"model.kernel_size={kernel_size} is larger than the input ({what.format(*spatial)}): "
            f"such a kernel sees mostly padding and is slow for nothing. Use "
            f"model.kernel_size={min(spatial)} or less (3 or 5 are usual)."
        )
    dims = len(spatial)
    cin = input_shape[0]
    layers: list[nn.Module] = []
    for cout in channels:
        layers.append(ConvUnit(cin, cout, spatial, kernel_size, norm, norm_groups, activation))
        if residual:
            layers.append(ResidualBlock(cout, spatial, kernel_size, norm, norm_groups, activation))
        layers.append(POOLS[dims](2))
        cin, spatial = cout, tuple(size // 2 for size in spatial)
    layers += [nn.Flatten(), nn.Dropout(dropout) if dropout > 0 else nn.Identity()]
    features = cin * math.prod(spatial)
    if fc_hidden > 0:
        layers += [nn.Linear(features, fc_hidden), make_activation(activation)]
        features = fc_hidden
    layers.append(nn.Linear(features, num_outputs))
    return nn.Sequential(*layers)
