"""A 2-D convolution and max / average pooling, forward and backward by hand, no autograd.

Convolution (stride s, the input zero-padded to x_pad), for sample n, output channel o and
output position (i, j):

    z[n,o,i,j] = b[o] + Σ_c Σ_p Σ_q w[o,c,p,q] · x_pad[n,c, i·s+p, j·s+q]

Read it per kernel offset (p, q): w[:,:,p,q] multiplies the strided window
x_pad[:, :, p + s·i, q + s·j] of every output at once. Each backward line is that product's
derivative, given δ = ∂C/∂z:

    ∂C/∂w[o,c,p,q] = Σ_n Σ_i Σ_j δ[n,o,i,j] · x_pad[n,c, i·s+p, j·s+q]   δ ⊗ the input patches
    ∂C/∂b[o]       = Σ_n Σ_i Σ_j δ[n,o,i,j]
    ∂C/∂x_pad[n,c, i·s+p, j·s+q] += Σ_o w[o,c,p,q] · δ[n,o,i,j]          scatter-add, then crop

∂C/∂x is the last form cropped by the padding: every input pixel collects w·δ from each output
whose window covered it. That is the "full" convolution of δ (dilated by s: s − 1 zeros between
its entries) with the kernel flipped by 180°, written as the sum it is, without the flip, the
dilation or the extra padding to get right.

Pooling (kernel k, stride s; windows of k×k, no padding):

    max  z[n,c,i,j] = max_{p,q} x[n,c, i·s+p, j·s+q]
         ∂C/∂x = δ routed to the window's maximum, 0 elsewhere. On ties the first maximum in
         reading order (row by row) wins, as in torch's max_pool2d.
    avg  z[n,c,i,j] = 1/k² Σ_p Σ_q x[n,c, i·s+p, j·s+q]
         ∂C/∂x[n,c, i·s+p, j·s+q] += δ[n,c,i,j] / k²   δ spread evenly over the window

Where windows overlap (s < k) a pixel sums what each window sends it. The `*Function` classes
wrap these passes as torch.autograd.Functions, so a network can train on them (autograd then
only chains whole layers).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nnlab.scratch.checking import Row, generator, randn, relative_error

Pair = int | tuple[int, int]
Padding = int | tuple[int, int, int, int]  # all sides, or F.pad's (left, right, top, bottom)


def _pair(value: Pair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _sides(padding: Padding) -> tuple[int, int, int, int]:
    return (padding,) * 4 if isinstance(padding, int) else tuple(padding)


def same_padding(kernel: Pair) -> tuple[int, int, int, int]:
    """torch's padding="same" at stride 1: k − 1 in all, the odd one out on the right/bottom."""
    kh, kw = _pair(kernel)
    return ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)


def _out_size(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int]:
    out = tuple((n - k) // s + 1 for n, k, s in zip(size, kernel, stride, strict=True))
    if min(out) < 1:
        raise ValueError(f"a {kernel} kernel does not fit a {size} input (padding included)")
    return out


def _window(t: Tensor, p: int, q: int, stride: tuple[int, int], out: tuple[int, int]) -> Tensor:
    """t[..., i·s+p, j·s+q] for every output (i, j): what kernel offset (p, q) touches."""
    (sh, sw), (oh, ow) = stride, out
    return t[..., p : p + sh * (oh - 1) + 1 : sh, q : q + sw * (ow - 1) + 1 : sw]


def _offsets(kernel: tuple[int, int]) -> list[tuple[int, int]]:
    """(p, q) in reading order, row by row: the order that decides max-pooling ties."""
    return list(itertools.product(range(kernel[0]), range(kernel[1])))


# ---- convolution -------------------------------------------------------------------------


def conv2d_forward(
    x: Tensor, w: Tensor, b: Tensor | None, stride: Pair = 1, padding: Padding = 0
) -> Tensor:
    """z[n,o,i,j] = b[o] + Σ_c Σ_p Σ_q w[o,c,p,q] · x_pad[n,c, i·s+p, j·s+q]."""
    x_pad, kernel, stride = F.pad(x, _sides(padding)), tuple(w.shape[2:]), _pair(stride)
    out = _out_size(tuple(x_pad.shape[2:]), kernel, stride)
    z = x.new_zeros(len(x), len(w), *out)
    for p, q in _offsets(kernel):
        z += torch.einsum("oc,ncij->noij", w[:, :, p, q], _window(x_pad, p, q, stride, out))
    return z if b is None else z + b[:, None, None]


def weight_grad(
    delta: Tensor, x: Tensor, w_shape: torch.Size, stride: Pair, padding: Padding
) -> Tensor:
    """∂C/∂w[o,c,p,q] = Σ_n Σ_i Σ_j δ[n,o,i,j] · x_pad[n,c, i·s+p, j·s+q]."""
    x_pad, stride, out = F.pad(x, _sides(padding)), _pair(stride), tuple(delta.shape[2:])
    grad_w = delta.new_zeros(w_shape)
    for p, q in _offsets(tuple(w_shape[2:])):
        grad_w[:, :, p, q] = torch.einsum("noij,ncij->oc", delta, _window(x_pad, p, q, stride, out))
    return grad_w


def bias_grad(delta: Tensor) -> Tensor:
    """∂C/∂b[o] = Σ_n Σ_i Σ_j δ[n,o,i,j]: b[o] is added to every output of channel o."""
    return delta.sum(dim=(0, 2, 3))


def input_grad(
    delta: Tensor, w: Tensor, x_shape: torch.Size, stride: Pair, padding: Padding
) -> Tensor:
    """∂C/∂x_pad[n,c, i·s+p, j·s+q] += Σ_o w[o,c,p,q] · δ[n,o,i,j], then the padding cropped:
    the padded zeros are constants, their gradient goes nowhere."""
    left, right, top, bottom = _sides(padding)
    n, c, h, width = x_shape
    grad = delta.new_zeros(n, c, top + h + bottom, left + width + right)
    stride, out = _pair(stride), tuple(delta.shape[2:])
    for p, q in _offsets(tuple(w.shape[2:])):
        _window(grad, p, q, stride, out).add_(torch.einsum("oc,noij->ncij", w[:, :, p, q], delta))
    return grad[:, :, top : top + h, left : left + width]


def conv2d_backward(
    delta: Tensor, x: Tensor, w: Tensor, stride: Pair = 1, padding: Padding = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """(∂C/∂x, ∂C/∂w, ∂C/∂b) from δ = ∂C/∂z."""
    return (
        input_grad(delta, w, x.shape, stride, padding),
        weight_grad(delta, x, w.shape, stride, padding),
        bias_grad(delta),
    )


# ---- pooling -----------------------------------------------------------------------------


def max_pool2d_forward(
    x: Tensor, kernel: Pair, stride: Pair | None = None
) -> tuple[Tensor, Tensor]:
    """(z, winner): z = the max of each window; winner = which offset of the window (its index
    in reading order) holds it, for the backward pass. Strict > keeps the first of equal maxima."""
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    out = _out_size(tuple(x.shape[2:]), kernel, stride)
    z = x.new_full((*x.shape[:2], *out), float("-inf"))
    winner = torch.zeros(z.shape, dtype=torch.long, device=x.device)
    for offset, (p, q) in enumerate(_offsets(kernel)):
        candidate = _window(x, p, q, stride, out)
        better = (candidate > z) | candidate.isnan()  # torch's rule: a NaN wins, and spreads
        z = torch.where(better, candidate, z)
        winner[better] = offset
    return z, winner


def max_pool2d_backward(
    delta: Tensor, winner: Tensor, x_shape: torch.Size, kernel: Pair, stride: Pair | None = None
) -> Tensor:
    """∂C/∂x: each window's δ goes to its maximum only (∂ max / ∂x is 1 there, 0 elsewhere)."""
    kernel = _pair(kernel)
    stride, out = kernel if stride is None else _pair(stride), tuple(delta.shape[2:])
    grad_x = delta.new_zeros(x_shape)
    for offset, (p, q) in enumerate(_offsets(kernel)):
        _window(grad_x, p, q, stride, out).add_(delta * (winner == offset))
    return grad_x


def avg_pool2d_forward(x: Tensor, kernel: Pair, stride: Pair | None = None) -> Tensor:
    """z[n,c,i,j] = 1/k² Σ_p Σ_q x[n,c, i·s+p, j·s+q]."""
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    out = _out_size(tuple(x.shape[2:]), kernel, stride)
    offsets = _offsets(kernel)
    return sum(_window(x, p, q, stride, out) for p, q in offsets) / len(offsets)


def avg_pool2d_backward(
    delta: Tensor, x_shape: torch.Size, kernel: Pair, stride: Pair | None = None
) -> Tensor:
    """∂C/∂x[n,c, i·s+p, j·s+q] += δ[n,c,i,j] / k²: every pixel of a window weighs 1/k²."""
    kernel = _pair(kernel)
    stride, out = kernel if stride is None else _pair(stride), tuple(delta.shape[2:])
    offsets = _offsets(kernel)
    grad_x = delta.new_zeros(x_shape)
    for p, q in offsets:
        _window(grad_x, p, q, stride, out).add_(delta / len(offsets))
    return grad_x


# ---- the layers for a network: autograd calls the passes above --------------------------


class Conv2dFunction(torch.autograd.Function):
    """Conv2dFunction.apply(x, w, b, stride, padding); b may be None. Backward: δ → the three
    gradients above (each only when something asks for it)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, stride: Pair, padding: Padding):
        ctx.save_for_backward(x, w)
        ctx.settings, ctx.has_bias = (stride, padding), b is not None
        return conv2d_forward(x, w, b, stride, padding)

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        stride, padding = ctx.settings
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        return (
            input_grad(delta, w, x.shape, stride, padding) if need_x else None,
            weight_grad(delta, x, w.shape, stride, padding) if need_w else None,
            bias_grad(delta) if ctx.has_bias and need_b else None,
            None,
            None,
        )


class MaxPool2dFunction(torch.autograd.Function):
    """MaxPool2dFunction.apply(x, kernel, stride): δ routed to each window's maximum."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: Pair, stride: Pair | None = None) -> Tensor:
        z, winner = max_pool2d_forward(x, kernel, stride)
        ctx.save_for_backward(winner)
        ctx.settings = (x.shape, kernel, stride)
        return z

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        (winner,) = ctx.saved_tensors
        return max_pool2d_backward(delta, winner, *ctx.settings), None, None


class AvgPool2dFunction(torch.autograd.Function):
    """AvgPool2dFunction.apply(x, kernel, stride): δ/k² spread over each window."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: Pair, stride: Pair | None = None) -> Tensor:
        ctx.settings = (x.shape, kernel, stride)
        return avg_pool2d_forward(x, kernel, stride)

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        return avg_pool2d_backward(delta, *ctx.settings), None, None


# ---- checks against autograd, in float64 -------------------------------------------------

# (N, C in, C out, H, W, kernel, stride, padding): 1 and 3 input channels, kernels 1/3/5 (and
# an even one at torch's "same" padding), strides 1/2, paddings 0/1/2, odd and even sizes
CONV_CASES = [
    (2, 1, 2, 6, 6, 1, 1, 0),
    (2, 3, 4, 7, 7, 3, 1, 1),
    (2, 3, 4, 8, 8, 3, 2, 1),
    (2, 3, 2, 6, 7, 3, 2, 0),
    (1, 1, 3, 9, 8, 5, 2, 2),
    (2, 3, 2, 7, 6, 5, 1, 0),
    (2, 2, 3, 5, 5, 1, 2, 2),
    (1, 3, 2, 6, 6, 4, 1, "same"),
]
# (N, C, H, W, kernel, stride), each for max and avg: kernels 2/3, strides 1/2, odd and even
POOL_CASES = [(2, 2, 8, 8, 2, 2), (2, 1, 7, 6, 2, 1), (2, 3, 7, 7, 3, 2), (1, 2, 6, 5, 3, 1)]


def _conv_case(gen: torch.Generator, case: tuple) -> list[Row]:
    n, c, o, h, width, k, stride, pad = case
    x, w, b = randn(gen, n, c, h, width), randn(gen, o, c, k, k), randn(gen, o)
    padding = same_padding(k) if pad == "same" else pad
    z = conv2d_forward(x, w, b, stride, padding)
    delta = randn(gen, *z.shape)  # any ∂C/∂z: C = Σ δ ⊙ z
    grads = conv2d_backward(delta, x, w, stride, padding)

    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    with warnings.catch_warnings():  # torch notes that its "same" with an even kernel copies x
        warnings.simplefilter("ignore", UserWarning)
        reference = F.conv2d(*leaves, stride=stride, padding=pad)
    (reference * delta).sum().backward()
    name = f"N={n} C={c}→{o} H×W={h}×{width} k={k} stride={stride} pad={pad}"
    rows = [Row(name, "z (forward)", relative_error(z, reference.detach()))]
    for label, mine, leaf in zip(("∂C/∂x", "∂C/∂w", "∂C/∂b"), grads, leaves, strict=True):
        rows.append(Row(name, label, relative_error(mine, leaf.grad)))
    return rows


def check_conv(seed: int = 0) -> list[Row]:
    """The hand-written convolution (z, ∂C/∂x, ∂C/∂w, ∂C/∂b) against torch's conv2d and
    autograd, over CONV_CASES, in float64."""
    gen = generator(seed)
    return [row for case in CONV_CASES for row in _conv_case(gen, case)]


def _pool_case(gen: torch.Generator, kind: str, case: tuple) -> list[Row]:
    n, c, h, width, k, stride = case
    x = randn(gen, n, c, h, width)
    if kind == "max":
        z, winner = max_pool2d_forward(x, k, stride)
        grad = max_pool2d_backward(delta := randn(gen, *z.shape), winner, x.shape, k, stride)
    else:
        z = avg_pool2d_forward(x, k, stride)
        grad = avg_pool2d_backward(delta := randn(gen, *z.shape), x.shape, k, stride)
    leaf = x.clone().requires_grad_(True)
    torch_pool = F.max_pool2d if kind == "max" else F.avg_pool2d
    reference = torch_pool(leaf, k, stride)
    (reference * delta).sum().backward()
    name = f"{kind} N={n} C={c} H×W={h}×{width} k={k} stride={stride}"
    return [
        Row(name, "z (forward)", relative_error(z, reference.detach())),
        Row(name, "∂C/∂x", relative_error(grad, leaf.grad)),
    ]


def check_pool(seed: int = 0) -> list[Row]:
    """Max and average pooling (z, ∂C/∂x) against torch's max_pool2d / avg_pool2d and
    autograd, over POOL_CASES, in float64."""
    gen = generator(seed)
    return [
        row for kind in ("max", "avg") for case in POOL_CASES for row in _pool_case(gen, kind, case)
    ]
