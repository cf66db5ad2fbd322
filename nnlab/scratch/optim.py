"""Optimizer update rules written out by hand, to check torch.optim against.

L2 weight decay adds λw to the gradient (the derivative of λ/2·‖w‖²) before every rule:
    sgd       w ← w − η g
    momentum  v ← γ v + η g;   w ← w − v
    adam      m ← β₁m + (1−β₁)g;  s ← β₂s + (1−β₂)g²;  w ← w − η m̂ / (√ŝ + ε),
              with m̂ = m/(1−β₁ᵗ), ŝ = s/(1−β₂ᵗ)
"""

from __future__ import annotations

import torch
from torch import Tensor

from nnlab.errors import choice_error

RULES = ("sgd", "momentum", "adam")


class ScratchOptimizer:
    """One of RULES over a list of plain tensors, updated in place from given gradients."""

    def __init__(
        self,
        params: list[Tensor],
        rule: str,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if rule not in RULES:
            raise choice_error("optimizer", rule, RULES)
        self.params, self.rule, self.lr, self.weight_decay = params, rule, lr, weight_decay
        self.momentum, self.betas, self.eps = momentum, betas, eps
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        self.t = 0

    def step(self, grads: list[Tensor]) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        for i, (w, g) in enumerate(zip(self.params, grads, strict=True)):
            g = g + self.weight_decay * w
            first, second = self.state[i]
            if self.rule == "sgd":
                w -= self.lr * g
            elif self.rule == "momentum":
                first.mul_(self.momentum).add_(self.lr * g)  # v = γv + ηg
                w -= first
            else:
                first.mul_(beta1).add_((1 - beta1) * g)
                second.mul_(beta2).add_((1 - beta2) * g * g)
                m_hat = first / (1 - beta1**self.t)
                s_hat = second / (1 - beta2**self.t)
                w -= self.lr * m_hat / (s_hat.sqrt() + self.eps)


def check_optim(rule: str, steps: int = 10, weight_decay: float = 1e-2, seed: int = 0) -> float:
    """Max relative difference, over `steps` updates, between the hand-written rule and
    torch.optim on the same parameters and loss (a random least-squares problem, float64)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(20, 8, generator=generator, dtype=torch.float64)
    target = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    start = [torch.randn(8, 3, generator=generator, dtype=torch.float64) for _ in range(2)]

    def loss(params: list[Tensor]) -> Tensor:
        return ((a @ params[0] + (a @ params[1]).tanh() - target) ** 2).mean()

    mine = [p.clone() for p in start]
    scratch = ScratchOptimizer(mine, rule, lr=0.05, weight_decay=weight_decay)
    theirs = [p.clone().requires_grad_(True) for p in start]
    reference = {
        "sgd": lambda: torch.optim.SGD(theirs, lr=0.05, weight_decay=weight_decay),
        "momentum": lambda: torch.optim.SGD(
            theirs, lr=0.05, momentum=0.9, weight_decay=weight_decay
        ),
        "adam": lambda: torch.optim.Adam(theirs, lr=0.05, weight_decay=weight_decay),
    }[rule]()
    worst = 0.0
    for _ in range(steps):
        leaves = [p.clone().requires_grad_(True) for p in mine]
        scratch.step(list(torch.autograd.grad(loss(leaves), leaves)))
        reference.zero_grad()
        loss(theirs).backward()
        reference.step()
        for m, t in zip(mine, theirs, strict=True):
            scale = t.detach().abs().max().clamp_min(1e-12)
            worst = max(worst, float((m - t.detach()).abs().max() / scale))
    return worst
