"""Convolutional network builder: conv stages with pooling, then fully connected layers.

One builder for (C, H, W) images and (C, L) signals: the same units, in 2-D or 1-D, and for
either engine: model.engine=scratch swaps every layer for its hand-written drop-in (same
parameter names, so a checkpoint fits both).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from nnlab.choices import ENGINES
from nnlab.errors import UserError, choice_error
from nnlab.models.layers import make_activation, make_norm
from nnlab.scratch import modules as scratch
from nnlab.scratch.engine import refuse
from nnlab.scratch.norm import ScratchBatchNorm

BUILDER = "nnlab.models.cnn.build_cnn"  # the _target_ that builds this network
# Spatial axes per sample → the convolution and pooling classes that run over them.
CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d}
POOLS: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
SCRATCH_CONVS: dict[int, type[nn.Module]] = {1: scratch.ScratchConv1d, 2: scratch.ScratchConv2d}
SCRATCH_POOLS: dict[int, type[nn.Module]] = {
    1: scratch.ScratchMaxPool1d,
    2: scratch.ScratchMaxPool2d,
}


def _conv(
    cin: int, cout: int, kernel: int, dims: int, bias: bool = True, hand: bool = False
) -> nn.Module:
    """A size-preserving convolution over `dims` spatial axes. An even kernel needs one more
    padding on one side than the other, which only torch's "same" does (k // 2 on both sides
    would grow the output by one, and the classifier's input size would not match)."""
    padding = kernel // 2 if kernel % 2 else "same"
    return (SCRATCH_CONVS if hand else CONVS)[dims](cin, cout, kernel, padding=padding, bias=bias)


def _norm(kind: str, shape: tuple[int, ...], groups: int, hand: bool) -> nn.Module:
    """make_norm's layer, or its hand-written drop-in: over (C, ...) layer and instance norm
    are group norms (one group; a group per channel) with the same parameters."""
    module = make_norm(kind, shape, groups)
    if not hand or kind == "none":
        return module
    if kind == "batch":
        return ScratchBatchNorm(shape[0], module.eps, module.momentum)
    count = module.num_groups if kind != "instance" else shape[0]
    return scratch.ScratchGroupNorm(count, shape[0], module.eps)


def _activation(kind: str, hand: bool) -> nn.Module:
    return scratch.ScratchActivation(kind) if hand else make_activation(kind)


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
        hand: bool = False,
    ) -> None:
        super().__init__(
            _conv(cin, cout, kernel, len(spatial), bias=norm == "none", hand=hand),
            _norm(norm, (cout, *spatial), groups, hand),
            _activation(act, hand),
        )


class ResidualBlock(nn.Module):
    """Two conv units with an identity skip: the gradient has a path around both (with
    hand-written layers too: the skip's add is the only step autograd differentiates)."""

    def __init__(
        self,
        channels: int,
        spatial: tuple[int, ...],
        kernel: int,
        norm: str,
        groups: int,
        act: str,
        hand: bool = False,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvUnit(channels, channels, spatial, kernel, norm, groups, act, hand),
            _conv(channels, channels, kernel, len(spatial), hand=hand),
        )
        self.act = _activation(act, hand)

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


class ScratchCNN(scratch.HandWritten, nn.Sequential):
    """The CNN of hand-written layers (model.engine=scratch), trained with the hand-written
    cost; its state_dict is the autograd CNN's, key for key."""


def _check_engine(engine: str, dropout: float) -> None:
    """UserError for what the hand-written engine cannot train, before anything is built."""
    if engine not in ENGINES:
        raise choice_error("model.engine", engine, ENGINES)
    refuse(
        [(engine == "scratch" and dropout > 0, f"model.dropout={dropout}", "model.dropout=0")],
        "model=cnn model.engine=scratch has hand-written convolution, max-pooling, norms, "
        "activations and linear layers, but no dropout",
        "nnlab train model=cnn model.engine=scratch model.dropout=0",
    )


def _check_fits(spatial: tuple[int, ...], channels: list[int], kernel_size: int) -> None:
    """UserError for more stages, or a larger kernel, than the input has room for."""
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
    engine: str = "autograd",
) -> nn.Sequential:
    """A CNN for (C, H, W) images, or for (C, L) signals when `signal` (2-D samples are
    otherwise (time steps, features) sequences, which a CNN does not read): each stage is conv
    (+ residual block) then max-pooling by 2 along every spatial axis. engine=scratch builds
    it of nnlab/scratch's hand-written layers.
    The defaults are conf/model/cnn.yaml's under train.yaml's norm= and activation=."""
    _check_engine(engine, dropout)
    spatial = _spatial_axes(input_shape, signal)
    _check_fits(spatial, channels, kernel_size)
    hand = engine == "scratch"
    dims = len(spatial)
    cin = input_shape[0]
    layers: list[nn.Module] = []
    unit = (kernel_size, norm, norm_groups, activation, hand)
    for cout in channels:
        layers.append(ConvUnit(cin, cout, spatial, *unit))
        if residual:
            layers.append(ResidualBlock(cout, spatial, *unit))
        layers.append((SCRATCH_POOLS if hand else POOLS)[dims](2))
        cin, spatial = cout, tuple(size // 2 for size in spatial)
    layers += [nn.Flatten(), nn.Dropout(dropout) if dropout > 0 else nn.Identity()]
    features = cin * math.prod(spatial)
    linear = scratch.ScratchLinear if hand else nn.Linear
    if fc_hidden > 0:
        layers += [linear(features, fc_hidden), _activation(activation, hand)]
        features = fc_hidden
    layers.append(linear(features, num_outputs))
    return ScratchCNN(*layers) if hand else nn.Sequential(*layers)
