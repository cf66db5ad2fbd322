"""A residual block by hand: y = x + F(x), F(x) = W₂ σ(W₁ x + b₁) + b₂, no autograd.

Forward, with z₁ = W₁ x + b₁ and a₁ = σ(z₁):   y = x + W₂ a₁ + b₂

The skip adds the identity to the block's Jacobian:

    ∂y/∂x = I + ∂F/∂x = I + W₂ diag(σ'(z₁)) W₁

so with δ = ∂C/∂y (rows: one sample per row, as in backprop.py)

    δ₁     = (δ W₂) ⊙ σ'(z₁)        BP2 through the second linear and σ
    ∂C/∂W₂ = δᵀ a₁    ∂C/∂b₂ = Σ δ   BP3, BP4
    ∂C/∂W₁ = δ₁ᵀ x    ∂C/∂b₁ = Σ δ₁  BP3, BP4
    ∂C/∂x  = δ + δ₁ W₁               the "1 +": δ passes the block untouched

Why it cures vanishing gradients: through L plain layers ∂C/∂x is a product of L factors
W σ'(z) — with σ' ≤ 1/4 (sigmoid) it shrinks geometrically with depth. Through L residual
blocks it is a product of (I + ∂Fˡ/∂x): expanded, one of its terms is δ itself, so however
small every ∂Fˡ/∂x gets, the gradient reaching the first layer does not vanish.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nnlab.errors import choice_error
from nnlab.scratch.backprop import ACTIVATIONS
from nnlab.scratch.checking import Row, generator, randn, relative_error

# torch's own activations: the reference the hand-written σ, σ' are checked against
_TORCH_ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "gelu": F.gelu,
}


def residual_forward(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str
) -> tuple[Tensor, Tensor, Tensor]:
    """y = x + W₂ σ(W₁ x + b₁) + b₂ for a batch x (n × d); returns y, z₁, a₁."""
    if activation not in ACTIVATIONS:
        raise choice_error("activation", activation, ACTIVATIONS)
    sigma, _ = ACTIVATIONS[activation]
    z1 = x @ w1.T + b1  # z₁ = W₁ x + b₁
    a1 = sigma(z1)  # a₁ = σ(z₁)
    return x + a1 @ w2.T + b2, z1, a1  # y = x + F(x)


def residual_backward(
    delta: Tensor, x: Tensor, z1: Tensor, a1: Tensor, w1: Tensor, w2: Tensor, activation: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """∂C/∂x, ∂C/∂W₁, ∂C/∂b₁, ∂C/∂W₂, ∂C/∂b₂ from δ = ∂C/∂y."""
    _, sigma_prime = ACTIVATIONS[activation]
    delta1 = (delta @ w2) * sigma_prime(z1)  # δ₁ = (δ W₂) ⊙ σ'(z₁)
    grad_x = delta + delta1 @ w1  # ∂C/∂x = δ (the skip, I) + δ₁ W₁ (the block, ∂F/∂x)
    return grad_x, delta1.T @ x, delta1.sum(dim=0), delta.T @ a1, delta.sum(dim=0)


def check_residual(seed: int = 0) -> list[Row]:
    """Two activations × two widths (d inputs, h hidden): y, ∂C/∂x, ∂C/∂W₁, ∂C/∂b₁, ∂C/∂W₂,
    ∂C/∂b₂ against autograd through torch's linear and activation, C = Σ δ ⊙ y."""
    gen = generator(seed)
    rows: list[Row] = []
    for activation in ("tanh", "relu"):
        for d, h in ((6, 6), (4, 10)):
            case = f"{activation} n=8 d={d} h={h}"
            x, delta = randn(gen, 8, d), randn(gen, 8, d)
            params = [randn(gen, h, d) / d**0.5, randn(gen, h) * 0.1]
            params += [randn(gen, d, h) / h**0.5, randn(gen, d) * 0.1]
            y, z1, a1 = residual_forward(x, *params, activation)
            mine = residual_backward(delta, x, z1, a1, params[0], params[2], activation)
            leaves = [t.clone().requires_grad_(True) for t in (x, *params)]
            hidden = _TORCH_ACTIVATIONS[activation](F.linear(leaves[0], leaves[1], leaves[2]))
            reference = leaves[0] + F.linear(hidden, leaves[3], leaves[4])
            (reference * delta).sum().backward()
            rows.append(Row(case, "y", relative_error(y, reference.detach())))
            names = ["∂C/∂x", "∂C/∂W₁", "∂C/∂b₁", "∂C/∂W₂", "∂C/∂b₂"]
            rows += [
                Row(case, name, relative_error(m, leaf.grad))
                for m, leaf, name in zip(mine, leaves, names, strict=True)
            ]
    return rows


class ResidualFunction(torch.autograd.Function):
    """The block as one layer for the scratch engines; backward: residual_backward."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str
    ) -> Tensor:
        y, z1, a1 = residual_forward(x, w1, b1, w2, b2, activation)
        ctx.activation = activation
        ctx.save_for_backward(x, z1, a1, w1, w2)
        return y

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor | None, ...]:
        return *residual_backward(delta, *ctx.saved_tensors, ctx.activation), None
