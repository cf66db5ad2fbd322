"""nn.Module drop-ins whose forward and backward are nnlab/scratch's hand-written passes.

Each subclasses the torch layer it replaces, so parameter names, shapes and initialization
(hence the random stream a seed gives) are torch's, a state_dict moves between the engines,
and only the arithmetic changes: forward calls an autograd.Function whose backward is written
out by hand. Autograd merely chains whole layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nnlab.errors import choice_error
from nnlab.scratch import engine
from nnlab.scratch.backprop import ACTIVATIONS
from nnlab.scratch.conv import Conv2dFunction, MaxPool2dFunction, same_padding
from nnlab.scratch.norm import normalize, normalize_backward

# ---- fully connected: BP3/BP4 --------------------------------------------------------------


class LinearFunction(torch.autograd.Function):
    """z = x wᵀ + b over the last axis (any leading axes); backward, with δ = ∂C/∂z:
    ∂C/∂x = δ w,  ∂C/∂w = δᵀ x (BP3),  ∂C/∂b = Σ δ (BP4), both summed over the batch."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        z = x @ w.T
        return z if b is None else z + b

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        rows, inputs = delta.reshape(-1, delta.shape[-1]), x.reshape(-1, x.shape[-1])
        return (
            delta @ w if need_x else None,
            rows.T @ inputs if need_w else None,  # BP3
            rows.sum(dim=0) if ctx.has_bias and need_b else None,  # BP4
        )


class ScratchLinear(nn.Linear):
    """nn.Linear (weight, bias) differentiated by BP3/BP4 by hand."""

    def forward(self, x: Tensor) -> Tensor:
        return LinearFunction.apply(x, self.weight, self.bias)


# ---- activations: σ and σ' from backprop.ACTIVATIONS --------------------------------------


class ActivationFunction(torch.autograd.Function):
    """a = σ(z); backward: ∂C/∂z = ∂C/∂a ⊙ σ'(z), the factor BP1/BP2 multiply by."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, kind: str) -> Tensor:
        ctx.save_for_backward(z)
        ctx.kind = kind
        return ACTIVATIONS[kind][0](z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (z,) = ctx.saved_tensors
        return grad * ACTIVATIONS[ctx.kind][1](z), None


class ScratchActivation(nn.Module):
    """The activation `kind` (a key of backprop.ACTIVATIONS), with σ' by hand; no parameters,
    like torch's activation modules."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ACTIVATIONS:
            raise choice_error("activation", kind, ACTIVATIONS)
        self.kind = kind

    def forward(self, z: Tensor) -> Tensor:
        return ActivationFunction.apply(z, self.kind)

    def extra_repr(self) -> str:
        return self.kind


# ---- convolution and pooling: conv.py's passes; a (C, L) signal runs as a 1 × L image ------


def _conv_padding(kernel: tuple[int, ...], padding: Any) -> tuple[int, int, int, int]:
    """torch's padding (an int per axis, or "same") as F.pad's (left, right, top, bottom)."""
    if padding == "same":
        return same_padding(kernel if len(kernel) == 2 else (1, kernel[0]))
    if len(kernel) == 1:
        return (padding[0], padding[0], 0, 0)
    return (padding[1], padding[1], padding[0], padding[0])


class ScratchConv2d(nn.Conv2d):
    """nn.Conv2d (weight, bias; stride and padding, no dilation or groups) on Conv2dFunction."""

    def forward(self, x: Tensor) -> Tensor:
        padding = _conv_padding(self.kernel_size, self.padding)
        return Conv2dFunction.apply(x, self.weight, self.bias, self.stride, padding)


class ScratchConv1d(nn.Conv1d):
    """nn.Conv1d run as a 2-D convolution of height 1: x (N, C, L) → (N, C, 1, L), its weight
    (O, C, K) → (O, C, 1, K); only those reshapes are left to autograd."""

    def forward(self, x: Tensor) -> Tensor:
        padding = _conv_padding(self.kernel_size, self.padding)
        stride = (1, self.stride[0])
        z = Conv2dFunction.apply(x[:, :, None], self.weight[:, :, None], self.bias, stride, padding)
        return z[:, :, 0]


class ScratchMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d (kernel and stride only) on MaxPool2dFunction."""

    def forward(self, x: Tensor) -> Tensor:
        return MaxPool2dFunction.apply(x, self.kernel_size, self.stride)


class ScratchMaxPool1d(nn.MaxPool1d):
    """nn.MaxPool1d as a 1 × k max-pooling of a height-1 image."""

    def forward(self, x: Tensor) -> Tensor:
        return MaxPool2dFunction.apply(x[:, :, None], (1, self.kernel_size), (1, self.stride))[
            :, :, 0
        ]


# ---- group norm: layer norm (1 group) and instance norm (a group per channel) included --------


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    return (1, -1, *([1] * (x.dim() - 2)))


class GroupNormFunction(torch.autograd.Function):
    """norm.py's x̂ over each group of channels of one sample (its channels × positions), then
    y = γ x̂ + β per channel. Backward, with δ = ∂C/∂y and ĝ = γδ: ∂C/∂x is
    normalize_backward within each group, ∂C/∂γ = Σ δ x̂ and ∂C/∂β = Σ δ over batch and positions."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float):
        x_hat, inv_std = normalize(x.reshape(len(x), groups, -1), (2,), eps)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        shape = _channel_shape(x)
        return gamma.reshape(shape) * x_hat.reshape(x.shape) + beta.reshape(shape)

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        x_hat, inv_std, gamma = ctx.saved_tensors
        g_hat = (gamma.reshape(_channel_shape(delta)) * delta).reshape(x_hat.shape)
        grad_x = normalize_backward(g_hat, x_hat, inv_std, (2,)).reshape(delta.shape)
        dims = (0, *range(2, delta.dim()))
        grad_gamma = (delta * x_hat.reshape(delta.shape)).sum(dim=dims)
        return grad_x, grad_gamma, delta.sum(dim=dims), None, None


class ScratchGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (weight, bias per channel) on GroupNormFunction; with one group it is the
    CNN's layer norm, with a group per channel an affine instance norm (same parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return GroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps)


# ---- a whole network ------------------------------------------------------------------------


class HandWritten:
    """Marks a network built only of hand-written layers (model.engine=scratch): its task
    trains it with this cost, whose derivative is BP1 by hand, so autograd takes none."""

    def cost(self, loss: str, logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
        """nnlab's loss= on class targets (cross_entropy or mse), with BP1 for its gradient."""
        # the activation only shapes the quadratic cost, which no loss= maps to
        return engine.cost(loss, "relu", logits, target, num_classes)
