"""Optimizer and learning-rate schedule wiring shared by every task.

A task gets the optimizer as a factory (params → optimizer) and the schedule as a callable
(optimizer, total steps → Lightning's lr_scheduler dict or None): both are prepared by build.py,
so no task reads the config.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from nnlab.choices import SCHEDULERS
from nnlab.errors import choice_error

# (optimizer, optimizer steps in the run) → Lightning's lr_scheduler dict, or None: constant lr
Schedule = Callable[[torch.optim.Optimizer, int], dict[str, Any] | None]


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, name: str, **params: Any
) -> dict[str, Any] | None:
    """A Lightning lr_scheduler dict for `name`, or None for a constant learning rate.

    cosine and onecycle are stepped every batch over the whole run (`total_steps` batches);
    step decays every `step_size` epochs.
    """
    if name == "none":
        return None
    if name == "step":
        schedule = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=params["step_size"], gamma=params["gamma"]
        )
        return {"scheduler": schedule, "interval": "epoch"}
    if name == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total_steps), eta_min=params["eta_min"]
        )
        return {"scheduler": schedule, "interval": "step"}
    if name == "onecycle":
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=params["max_lr"],
            total_steps=max(2, total_steps),
            pct_start=params["pct_start"],
        )
        return {"scheduler": schedule, "interval": "step"}
    raise choice_error("scheduler", name, SCHEDULERS)


def lr_schedule(name: str, **params: Any) -> Schedule:
    """The Schedule of a scheduler= choice (`name` and its settings: step_size, eta_min, ...)."""
    # Checked when the optimizer is made, as before: a bad name fails where it always did.
    return functools.partial(make_scheduler, name=name, **params)


def constant_lr(optimizer: torch.optim.Optimizer, total_steps: int) -> None:
    """The Schedule that keeps the optimizer's learning rate (scheduler=none)."""
    return None


def optimizer_with_schedule(
    params: Iterable[torch.nn.Parameter],
    optimizer: Callable[..., torch.optim.Optimizer],
    schedule: Schedule,
    total_steps: int,
    lr: float | None = None,
) -> tuple[torch.optim.Optimizer, dict[str, Any] | None]:
    """The optimizer over `params` (with `lr` instead of the configured one, if given) and its
    Lightning lr_scheduler dict, or None for a constant learning rate."""
    opt = optimizer(params, **({} if lr is None else {"lr": lr}))
    return opt, schedule(opt, total_steps)


def configure(
    module: Any,
    params: Iterable[torch.nn.Parameter],
    optimizer: Callable[..., torch.optim.Optimizer],
    schedule: Schedule,
    total_steps: int | None = None,
) -> Any:
    """What LightningModule.configure_optimizers returns for one optimizer and its schedule;
    `total_steps` (optimizer steps in the run) defaults to Lightning's estimate."""
    total = module.trainer.estimated_stepping_batches if total_steps is None else total_steps
    opt, lr_scheduler = optimizer_with_schedule(params, optimizer, schedule, total)
    return opt if lr_scheduler is None else {"optimizer": opt, "lr_scheduler": lr_scheduler}
