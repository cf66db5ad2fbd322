"""Factories shared by every model: one way to make a normalization or activation layer."""

from __future__ import annotations

import math

from torch import nn

from nnlab.choices import ACTIVATIONS, NORMS
from nnlab.errors import UserError, choice_error

# one module class per name of choices.ACTIVATIONS (tests/test_config_facts.py holds them equal)
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def make_activation(kind: str) -> nn.Module:
    """A fresh activation module by name (one of choices.ACTIVATIONS)."""
    if kind not in ACTIVATIONS:
        raise choice_error("activation", kind, ACTIVATIONS)
    return ACTIVATION_MODULES[kind]()


def _groups_for(channels: int, groups: int) -> int:
    # GroupNorm needs groups | channels; rather than fail on widths like 100 with 8 groups, take
    # the largest divisor of the width that does not exceed the requested count.
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


# Per-sample activation rank → the batch-norm and instance-norm classes for it: (features,),
# a (C, L) signal, a (C, H, W) image.
BATCH_NORMS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d}
INSTANCE_NORMS: dict[int, type[nn.Module]] = {2: nn.InstanceNorm1d, 3: nn.InstanceNorm2d}


def make_norm(kind: str, shape: tuple[int, ...], groups: int = 8) -> nn.Module:
    """A normalization layer for activations of `shape` (per sample): (features,), a (C, L)
    signal or a (C, H, W) image."""
    if kind not in NORMS:
        raise choice_error("norm", kind, NORMS)
    if kind == "none":
        return nn.Identity()
    channels = shape[0]
    spatial = len(shape) > 1
    if kind == "batch":
        return BATCH_NORMS[len(shape)](channels)
    if kind == "layer":
        # Over (C, ...) LayerNorm is GroupNorm with one group: it keeps per-channel affine
        # parameters and does not tie the layer to one image size or signal length.
        return nn.GroupNorm(1, channels) if spatial else nn.LayerNorm(channels)
    if kind == "group":
        return nn.GroupNorm(_groups_for(channels, groups), channels)
    if not spatial:
        raise UserError(
            "norm=instance normalizes each channel of an image or signal over its positions, so "
            "it needs a convolutional model (model=cnn); a fully connected layer has no "
            "positions to normalize over. For this model use norm=batch, norm=layer or "
            "norm=group."
        )
    return INSTANCE_NORMS[len(shape)](channels, affine=True)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def flat_size(shape: tuple[int, ...]) -> int:
    """The number of values in one sample of `shape`."""
    return math.prod(shape)
