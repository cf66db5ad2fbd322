"""An MLP's forward and backward pass from the four backpropagation equations, no autograd.

With zˡ = wˡ aˡ⁻¹ + bˡ and aˡ = σ(zˡ), for a mini-batch of n samples (rows):

    BP1  δᴸ = ∇ₐC ⊙ σ'(zᴸ)                 output error
    BP2  δˡ = ((wˡ⁺¹)ᵀ δˡ⁺¹) ⊙ σ'(zˡ)        error propagated back
    BP3  ∂C/∂wˡ = δˡ (aˡ⁻¹)ᵀ                weight gradient
    BP4  ∂C/∂bˡ = δˡ                        bias gradient

summed over the batch, with C the mean cost over the batch. The output layer's activation
belongs to the cost:
    quadratic          C = 1/2n Σ‖y − σ(zᴸ)‖², σ the hidden layers' activation (classic backprop)
    cross_entropy      C = −1/n Σ y·log softmax(zᴸ); BP1 simplifies to δᴸ = (softmax(zᴸ) − y)/n
    softmax_quadratic  C = 1/2n Σ‖y − softmax(zᴸ)‖² (nnlab's loss=mse); the softmax couples the
                       outputs, so σ'(zᴸ) in BP1 becomes its Jacobian: δᴸ = a ⊙ (g − (g·a)),
                       g = (a − y)/n
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from nnlab.errors import choice_error

COSTS = ("quadratic", "cross_entropy", "softmax_quadratic")
_LEAK = 0.01  # torch.nn.LeakyReLU's default slope
_SQRT_2PI = math.sqrt(2 * math.pi)


def _phi(z: Tensor) -> Tensor:  # standard normal pdf, for GELU's derivative
    return torch.exp(-0.5 * z * z) / _SQRT_2PI


def _cdf(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


# activation name → (σ, σ'), each written out by hand
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "sigmoid": (
        lambda z: 1 / (1 + torch.exp(-z)),
        lambda z: (1 / (1 + torch.exp(-z))) * (1 - 1 / (1 + torch.exp(-z))),
    ),
    "tanh": (torch.tanh, lambda z: 1 - torch.tanh(z) ** 2),
    "relu": (lambda z: z.clamp_min(0), lambda z: (z > 0).to(z.dtype)),
    "leaky_relu": (
        lambda z: torch.where(z > 0, z, _LEAK * z),
        lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, _LEAK)),
    ),
    "elu": (
        lambda z: torch.where(z > 0, z, torch.exp(z) - 1),
        lambda z: torch.where(z > 0, torch.ones_like(z), torch.exp(z)),
    ),
    "gelu": (lambda z: z * _cdf(z), lambda z: _cdf(z) + z * _phi(z)),
}


class ScratchMLP:
    """Weights wˡ (out × in) and biases bˡ as plain tensors; no requires_grad anywhere."""

    def __init__(self, weights: list[Tensor], biases: list[Tensor], activation: str, cost: str):
        if activation not in ACTIVATIONS:
            raise choice_error("activation", activation, ACTIVATIONS)
        if cost not in COSTS:
            raise choice_error("cost", cost, COSTS)
        self.weights, self.biases = weights, biases
        self.sigma, self.sigma_prime = ACTIVATIONS[activation]
        self.cost = cost

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The weighted inputs zˡ of every layer and the activations aˡ⁻¹ feeding each (a⁰ = x);
        the output zᴸ stays raw: the cost applies its own output activation."""
        zs, activations = [], [x]
        for w, b in zip(self.weights, self.biases, strict=True):
            z = activations[-1] @ w.T + b
            zs.append(z)
            activations.append(self.sigma(z))
        return zs, activations[:-1]

    def output(self, z: Tensor) -> Tensor:
        """aᴸ, the network's output for the cost."""
        return self.sigma(z) if self.cost == "quadratic" else torch.softmax(z, dim=1)

    def cost_of(self, z: Tensor, y: Tensor) -> Tensor:
        """C for a batch from its output zᴸ: y is one-hot, or the target values (quadratic)."""
        n = len(z)
        if self.cost == "cross_entropy":
            return -(y * (z - torch.logsumexp(z, dim=1, keepdim=True))).sum() / n
        return 0.5 * ((self.output(z) - y) ** 2).sum() / n

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.cost_of(self.forward(x)[0][-1], y)

    def output_error(self, z: Tensor, y: Tensor) -> Tensor:
        """BP1: δᴸ = ∂C/∂zᴸ for the batch (C a mean, so δᴸ carries the 1/n)."""
        a, n = self.output(z), len(z)
        if self.cost == "cross_entropy":
            return (a - y) / n
        g = (a - y) / n  # ∇ₐC
        if self.cost == "quadratic":
            return g * self.sigma_prime(z)
        return a * (g - (g * a).sum(dim=1, keepdim=True))  # softmax Jacobian applied to g

    def backward_from(
        self, delta: Tensor, zs: list[Tensor], activations: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """∂C/∂wˡ and ∂C/∂bˡ of every layer given δᴸ (BP2–BP4), and the first layer's δ¹."""
        grad_w = [torch.empty(0)] * len(self.weights)
        grad_b = [torch.empty(0)] * len(self.weights)
        for layer in range(len(self.weights) - 1, -1, -1):
            grad_w[layer] = delta.T @ activations[layer]  # BP3, summed over the batch
            grad_b[layer] = delta.sum(dim=0)  # BP4
            if layer > 0:
                delta = (delta @ self.weights[layer]) * self.sigma_prime(zs[layer - 1])  # BP2
        return grad_w, grad_b, delta

    def backward(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """∂C/∂wˡ and ∂C/∂bˡ for every layer, from BP1–BP4."""
        zs, activations = self.forward(x)
        grad_w, grad_b, _ = self.backward_from(self.output_error(zs[-1], y), zs, activations)
        return grad_w, grad_b


def check_backprop(
    sizes: list[int], activation: str, cost: str, batch: int = 16, seed: int = 0
) -> list[float]:
    """Max relative error per layer between BP1–BP4 and autograd, in float64, on random data."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    weights = [randn(o, i) / math.sqrt(i) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
    biases = [randn(o) * 0.1 for o in sizes[1:]]
    x = randn(batch, sizes[0])
    labels = torch.randint(0, sizes[-1], (batch,), generator=generator)
    y = torch.nn.functional.one_hot(labels, sizes[-1]).to(torch.float64)
    net = ScratchMLP(weights, biases, activation, cost)
    grad_w, grad_b = net.backward(x, y)

    leaves = [t.clone().requires_grad_(True) for t in weights + biases]
    auto = ScratchMLP(leaves[: len(weights)], leaves[len(weights) :], activation, cost)
    auto.loss(x, y).backward()
    errors = []
    for layer in range(len(weights)):
        pairs = (
            (grad_w[layer], leaves[layer].grad),
            (grad_b[layer], leaves[len(weights) + layer].grad),
        )
        errors.append(max(_relative_error(mine, ref) for mine, ref in pairs))
    return errors


def _relative_error(mine: Tensor, reference: Tensor) -> float:
    scale = reference.abs().max().clamp_min(1e-12)
    return float((mine - reference).abs().max() / scale)
