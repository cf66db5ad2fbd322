"""Optimizer update rules written out by hand: `nnlab check optim` compares them with
torch.optim, and model.engine=scratch trains with them.

L2 weight decay adds λw to the gradient g (the derivative of λ/2·‖w‖²) before every rule but
adamw, whose decay is decoupled from g:
    sgd       w ← w − η g
    momentum  v ← γ v + η g;   w ← w − v
    adam      m ← β₁m + (1−β₁)g;  s ← β₂s + (1−β₂)g²;  w ← w − η m̂ / (√ŝ + ε),
              with m̂ = m/(1−β₁ᵗ), ŝ = s/(1−β₂ᵗ)
    rmsprop   v ← αv + (1−α)g²;  w ← w − η g / (√v + ε)
    adamw     w ← w − ηλw, then the adam step with the raw g (torch's order: the decay uses
              the weights before this step's Adam update)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from nnlab.errors import UserError, choice_error
from nnlab.scratch.checking import Row, generator, randn, relative_error

Group = dict[str, Any]  # a parameter group's settings: lr, weight_decay, betas, ...


def sgd(w: Tensor, g: Tensor, state: dict[str, Any], group: Group) -> None:
    w -= group["lr"] * g  # w ← w − η g


def momentum(w: Tensor, g: Tensor, state: dict[str, Any], group: Group) -> None:
    v = state["first"]
    v.mul_(group["momentum"]).add_(group["lr"] * g)  # v ← γ v + η g
    w -= v  # w ← w − v


def adam(w: Tensor, g: Tensor, state: dict[str, Any], group: Group) -> None:
    (beta1, beta2), t = group["betas"], state["t"]
    m, s = state["first"], state["second"]
    m.mul_(beta1).add_((1 - beta1) * g)  # m ← β₁m + (1−β₁)g
    s.mul_(beta2).add_((1 - beta2) * g * g)  # s ← β₂s + (1−β₂)g²
    m_hat = m / (1 - beta1**t)  # m̂ = m/(1−β₁ᵗ)
    s_hat = s / (1 - beta2**t)  # ŝ = s/(1−β₂ᵗ)
    w -= group["lr"] * m_hat / (s_hat.sqrt() + group["eps"])  # w ← w − η m̂/(√ŝ + ε)


def rmsprop(w: Tensor, g: Tensor, state: dict[str, Any], group: Group) -> None:
    v, alpha = state["second"], group["alpha"]
    v.mul_(alpha).add_((1 - alpha) * g * g)  # v ← αv + (1−α)g²
    w -= group["lr"] * g / (v.sqrt() + group["eps"])  # w ← w − η g/(√v + ε)


def adamw(w: Tensor, g: Tensor, state: dict[str, Any], group: Group) -> None:
    w -= group["lr"] * group["weight_decay"] * w  # w ← w − ηλw, before the Adam step
    adam(w, g, state, group)


# rule → its update, looked up at every step (a test swaps one for a wrong one)
UPDATES: dict[str, Callable[[Tensor, Tensor, dict[str, Any], Group], None]] = {
    "sgd": sgd,
    "momentum": momentum,
    "adam": adam,
    "rmsprop": rmsprop,
    "adamw": adamw,
}
RULES = tuple(UPDATES)
DECOUPLED = {"adamw"}  # weight decay applied to w by the rule itself, not added to g


class ScratchOptimizer(torch.optim.Optimizer):
    """One of RULES written out by hand; a torch.optim.Optimizer only for its bookkeeping
    (parameter groups, state in checkpoints, learning-rate schedulers), so Lightning can step it.
    Defaults are torch's: RMSprop α=0.99 (not centered, no momentum), ε=1e-8."""

    def __init__(
        self,
        params: Iterable[Tensor],
        rule: str,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        alpha: float = 0.99,
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
            "alpha": alpha,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update = UPDATES[self.rule]
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                if self.rule not in DECOUPLED:
                    g = g + group["weight_decay"] * w  # L2: ∂/∂w of λ/2·‖w‖² is λw
                state = self.state[w]
                if not state:
                    state.update(t=0, first=torch.zeros_like(w), second=torch.zeros_like(w))
                state["t"] += 1
                update(w, g, state, group)
        return loss


# torch.optim class → the hand-written rule, and the settings each rule reads besides lr and
# weight_decay; any other setting (nesterov, amsgrad, centered, RMSprop's momentum, maximize...)
# must be off, its torch default, since the hand-written rule would silently ignore it
_RULE_OF = {"SGD": "sgd", "Adam": "adam", "RMSprop": "rmsprop", "AdamW": "adamw"}
_READS = {
    "sgd": (),
    "momentum": ("momentum",),
    "adam": ("betas", "eps"),
    "adamw": ("betas", "eps"),
    "rmsprop": ("alpha", "eps"),
}


def scratch_optimizer(
    optimizer: Callable[..., torch.optim.Optimizer],
) -> Callable[..., ScratchOptimizer]:
    """The hand-written counterpart of a torch.optim factory, a functools.partial of SGD, Adam,
    RMSprop or AdamW with its settings (what optimizer= instantiates to): the same rule and
    settings, by hand."""
    settings = dict(getattr(optimizer, "keywords", {}))
    func = getattr(optimizer, "func", optimizer)
    name = getattr(func, "__name__", type(optimizer).__name__)
    rule = _RULE_OF.get(name)
    if rule is None:
        raise UserError(
            f"model.engine=scratch writes the update rule by hand for optimizer=sgd, momentum, "
            f"adam, rmsprop and adamw; {name} has no hand-written rule. Pick one of those, or "
            f"use model.engine=autograd to train with {name}."
        )
    if rule == "sgd" and settings.get("momentum"):
        rule = "momentum"
    reads = ("lr", "weight_decay", *_READS[rule])
    for key, value in settings.items():
        if key not in reads and value:  # False, 0 and None are torch's defaults: harmless
            shown, off = ("true", "false") if isinstance(value, bool) else (value, "0")
            raise UserError(
                f"model.engine=scratch has no hand-written rule for {name} with "
                f"optimizer.{key}={shown}: the hand-written {rule} is torch's with {key} off. "
                f"Set optimizer.{key}={off} to train by hand, or use model.engine=autograd "
                f"to keep it."
            )
    # a setting left out takes torch's default for that class (AdamW's weight_decay is 0.01)
    defaults = {k: v.default for k, v in inspect.signature(func).parameters.items()}
    chosen = {key: settings.get(key, defaults[key]) for key in reads}
    if "betas" in chosen:
        chosen["betas"] = tuple(chosen["betas"])
    return functools.partial(ScratchOptimizer, rule=rule, **chosen)


# (rule, settings): each rule with torch's defaults and with other settings, L2 or decay on
TORCH = {"sgd": "SGD", "momentum": "SGD", "adam": "Adam", "rmsprop": "RMSprop", "adamw": "AdamW"}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.1, "weight_decay": 0.01}),
    ("momentum", {"lr": 0.05, "momentum": 0.9}),
    ("momentum", {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.01}),
    ("adam", {"lr": 0.05}),
    ("adam", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01}),
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.02, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.01}),
    ("adamw", {"lr": 0.05, "weight_decay": 0.01}),
    ("adamw", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
]


def check_optim(seed: int = 0, steps: int = 10) -> list[Row]:
    """Each rule of CASES against torch.optim on the same parameters and loss (a random
    least-squares problem through tanh, float64): one Row per (case, parameter), the relative
    error of the parameter after `steps` updates, the worst over the steps."""
    gen = generator(seed)
    a, target = randn(gen, 20, 8), randn(gen, 20, 3)
    start = {"W 8×3": randn(gen, 8, 3), "V 8×3": randn(gen, 8, 3), "b 3": randn(gen, 3)}

    def cost(w: Tensor, v: Tensor, b: Tensor) -> Tensor:
        return ((a @ w + (a @ v).tanh() + b - target) ** 2).mean()

    rows = []
    for rule, settings in CASES:
        mine = [p.clone().requires_grad_(True) for p in start.values()]
        theirs = [p.clone().requires_grad_(True) for p in start.values()]
        optimizers = [
            ScratchOptimizer(mine, rule, **settings),
            getattr(torch.optim, TORCH[rule])(theirs, **settings),
        ]
        worst = [0.0] * len(start)
        for _ in range(steps):
            for optimizer, params in zip(optimizers, (mine, theirs), strict=True):
                optimizer.zero_grad()
                cost(*params).backward()
                optimizer.step()
            for i, (m, t) in enumerate(zip(mine, theirs, strict=True)):
                worst[i] = max(worst[i], relative_error(m.detach(), t.detach()))
        case = f"{rule}: " + " ".join(f"{k}={_plain(v)}" for k, v in settings.items())
        rows += [Row(case, name, e) for name, e in zip(start, worst, strict=True)]
    return rows


def _plain(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
