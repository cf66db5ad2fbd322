"""`nnlab check backprop` and `nnlab check optim`: the library against nnlab's from-scratch math
(nnlab/scratch/)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from nnlab.commands import OVERRIDES_HELP
from nnlab.console import out, user_errors
from nnlab.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

TOLERANCE = 1e-6  # float64 agreement demanded of the hand-written math
# loss=mse is the quadratic cost; checked on σ outputs (classic backprop) and on the softmax
# outputs nnlab's loss=mse trains with
COSTS = {"cross_entropy": ["cross_entropy"], "mse": ["quadratic", "softmax_quadratic"]}


def _check_table(title: str, columns: list[str], rows: list[list[str]], worst: float) -> None:
    table = Table(title=title, header_style="bold")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    verdict = "PASS" if worst < TOLERANCE else "FAIL"
    out.print(f"{verdict}: largest relative error {worst:.1e} (must be < {TOLERANCE:.0e})")
    if worst >= TOLERANCE:
        raise typer.Exit(1)


def check_backprop(overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP)) -> None:
    """Gradients from the four backprop equations vs autograd, per layer, in float64.

    Every activation and cost unless activation= or loss= is given; the MLP's sizes come
    from the data (digits: 64 inputs, 10 outputs), model.hidden and model.depth.

    Examples:

      nnlab check backprop

      nnlab check backprop activation=sigmoid loss=mse model.depth=4 model.hidden=32

      nnlab check backprop data=iris            # 4 inputs, 3 outputs
    """
    overrides = overrides or []
    with user_errors():
        from nnlab.config import compose_config

        cfg, choices = compose_config(overrides)
        if choices.get("model") != "mlp":
            raise UserError("nnlab check backprop checks the MLP: leave model= at mlp.")
        from nnlab.scratch.backprop import ACTIVATIONS, check_backprop

        typed = {o.partition("=")[0] for o in overrides}
        activations = [cfg.activation.kind] if "activation" in typed else list(ACTIVATIONS)
        chosen = COSTS[cfg.loss] if "loss" in typed else [c for cs in COSTS.values() for c in cs]
        inputs, outputs = data_sizes(cfg)
        sizes = [inputs, *[cfg.model.hidden] * cfg.model.depth, outputs]
        rows, worst = [], 0.0
        for activation in activations:
            for cost in chosen:
                errors = check_backprop(sizes, activation, cost)
                worst = max(worst, *errors)
                rows.append([activation, cost, *(f"{e:.1e}" for e in errors)])
    layers = [f"layer {i + 1}" for i in range(len(sizes) - 1)]
    _check_table(
        f"backprop vs autograd, sizes {sizes}", ["activation", "cost", *layers], rows, worst
    )


def data_sizes(cfg: DictConfig) -> tuple[int, int]:
    """The MLP's input size (a sample, flattened) and output size for the configured data.

    Asked of the datamodule itself, as training does: only it knows its shapes (a table's
    columns, an image's channels), so no number here can drift from what `nnlab train` builds.
    """
    import math

    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        datamodule: Any = instantiate(cfg.data)  # a `_target_` of nnlab's own: config checked it
    except InstantiationException as e:
        # Hydra wraps what a datamodule raises; bad input must reach the user as itself
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise
    datamodule.setup("fit")
    return math.prod(datamodule.input_shape), int(datamodule.num_outputs)


def check_optim(
    steps: int = typer.Option(10, min=1, help="Updates to compare."),
    weight_decay: float = typer.Option(1e-2, min=0.0, help="L2 weight decay λ."),
) -> None:
    """The hand-written update rules (sgd, momentum, adam, with L2) vs torch.optim.

    Examples:

      nnlab check optim

      nnlab check optim --steps 50 --weight-decay 0
    """
    from nnlab.scratch.optim import RULES, check_optim

    errors = {rule: check_optim(rule, steps, weight_decay) for rule in RULES}
    rows = [[rule, "torch.optim", f"{error:.1e}"] for rule, error in errors.items()]
    title = f"update rules vs torch.optim, {steps} steps, weight decay {weight_decay}"
    _check_table(title, ["rule", "against", "max rel. error"], rows, max(errors.values()))
