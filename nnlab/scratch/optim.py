"""Optimizer update rules written out by hand: `nnlab check optim` compares them with
torch.optim, and model.engine=scratch trains with them.

L2 weight decay adds λw to the gradient (the derivative of λ/2·‖w‖²) before every rule:
    sgd       w ← w − η g
    momentum  v ← γ v + η g;   w ← w − v
    adam      m ← β₁m + (1−β₁)g;  s ← β₂s + (1−β₂)g²;  w ← w − η m̂ / (√ŝ + ε),
              with m̂ = m/(1−β₁ᵗ), ŝ = s/(1−β₂ᵗ)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from nnlab.errors import UserError, choice_error

RULES = ("sgd", "momentum", "adam")


class ScratchOptimizer(torch.optim.Optimizer):
    """One of RULES written out by hand; a torch.optim.Optimizer only for its bookkeeping
    (parameter groups, state in checkpoints, learning-rate schedulers), so Lightning can step it."""

    def __init__(
        self,
        params: Iterable[Tensor],
        rule: str,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if rule not in RULES:
            raise choice_error("optimizer", rule, RULES)
        self.rule = rule
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "betas": tuple(betas),
            "eps": eps,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta1, beta2 = group["lr"], *group["betas"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad + group["weight_decay"] * w
                state = self.state[w]
                if not state:
                    state.update(t=0, first=torch.zeros_like(w), second=torch.zeros_like(w))
                state["t"] += 1
                first, second = state["first"], state["second"]
                if self.rule == "sgd":
                    w -= lr * g
                elif self.rule == "momentum":
                    first.mul_(group["momentum"]).add_(lr * g)  # v = γv + ηg
                    w -= first
                else:
                    first.mul_(beta1).add_((1 - beta1) * g)
                    second.mul_(beta2).add_((1 - beta2) * g * g)
                    m_hat = first / (1 - beta1 ** state["t"])
                    s_hat = second / (1 - beta2 ** state["t"])
                    w -= lr * m_hat / (s_hat.sqrt() + group["eps"])
        return loss


def scratch_optimizer(
    optimizer: Callable[..., torch.optim.Optimizer],
) -> Callable[..., ScratchOptimizer]:
    """The hand-written counterpart of a torch.optim factory, a functools.partial of SGD or Adam
    with its settings (what optimizer= instantiates to): the same rule and settings, by hand."""
    settings = dict(getattr(optimizer, "keywords", {}))
    name = getattr(getattr(optimizer, "func", optimizer), "__name__", type(optimizer).__name__)
    momentum = settings.get("momentum", 0.0)
    rule = {"SGD": "momentum" if momentum else "sgd", "Adam": "adam"}.get(name)
    if rule is None or settings.get("nesterov") or settings.get("amsgrad"):
        raise UserError(
            f"model.engine=scratch writes the update rule by hand for optimizer=sgd, momentum "
            f"and adam; {name} with these settings has no hand-written rule. Pick one of those "
            f"three, or use model.engine=autograd to train with {name}."
        )
    chosen = {"lr": settings["lr"], "weight_decay": settings.get("weight_decay", 0.0)}
    if rule == "momentum":
        chosen["momentum"] = momentum
    if rule == "adam":
        chosen.update(betas=tuple(settings["betas"]), eps=settings["eps"])
    return functools.partial(ScratchOptimizer, rule=rule, **chosen)


def check_optim(rule: str, steps: int = 10, weight_decay: float = 1e-2, seed: int = 0) -> float:
    """Max relative difference, over `steps` updates, between the hand-written rule and
    torch.optim on the same parameters and loss (a random least-squares problem, float64)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(20, 8, generator=generator, dtype=torch.float64)
    target = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    start = [torch.randn(8, 3, generator=generator, dtype=torch.float64) for _ in range(2)]

    def loss(params: list[Tensor]) -> Tensor:
        return ((a @ params[0] + (a @ params[1]).tanh() - target) ** 2).mean()

    mine = [p.clone().requires_grad_(True) for p in start]
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
        scratch.zero_grad()
        loss(mine).backward()
        scratch.step()
        reference.zero_grad()
        loss(theirs).backward()
        reference.step()
        for m, t in zip(mine, theirs, strict=True):
            scale = t.detach().abs().max().clamp_min(1e-12)
            worst = max(worst, float((m.detach() - t.detach()).abs().max() / scale))
    return worst
