"""The `nnlab` commands, one module per group; `nnlab.cli` registers them on the app.

A module here imports only typer, rich and nnlab's torch-free helpers at its top: torch,
Lightning, Hydra and Optuna are imported inside the command bodies, after the input is checked."""

from __future__ import annotations

from typing import Any

import typer

OVERRIDES_HELP = "Hydra overrides, key=value: model=cnn optimizer.lr=0.01 trainer.max_epochs=20"
RUN_HELP = "Trained run (directory, name, .ckpt, 'latest')."


def _complete_overrides(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    from nnlab.completion import complete_overrides  # only on TAB: it reads all of conf/

    return complete_overrides(ctx, incomplete)


def _complete_runs(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    from nnlab.completion import complete_runs

    return complete_runs(ctx, incomplete)


def overrides_argument(help: str = OVERRIDES_HELP) -> Any:
    """The optional OVERRIDES... argument; TAB completes groups, choices and config keys."""
    return typer.Argument(None, help=help, autocompletion=_complete_overrides)


def run_argument(help: str = RUN_HELP) -> Any:
    """The required RUN argument; TAB completes 'latest' and the runs under outputs/runs."""
    return typer.Argument(..., help=help, autocompletion=_complete_runs)
