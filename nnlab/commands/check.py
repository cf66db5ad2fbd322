"""`nnlab check <topic>`: nnlab's from-scratch math (nnlab/scratch/) against autograd and
torch.optim, in float64; `nnlab check` alone runs every topic.

A topic's check is a function `check_<topic>(seed) -> list[Row]` in nnlab/scratch/, one Row per
(case, parameter); it is imported only when the command runs, so `--help` never loads torch."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from nnlab.commands import OVERRIDES_HELP
from nnlab.console import out, user_errors
from nnlab.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from nnlab.scratch.checking import Row

# Every topic, in the course's order: `nnlab check <name>` runs "module:function"
TOPICS = {
    "conv": "nnlab.scratch.conv:check_conv",
    "pool": "nnlab.scratch.conv:check_pool",
    "batchnorm": "nnlab.scratch.norm:check_batchnorm",
    "layernorm": "nnlab.scratch.norm:check_layernorm",
    "lstm": "nnlab.scratch.gated:check_lstm",
    "gru": "nnlab.scratch.gated:check_gru",
    "rnn": "nnlab.scratch.gated:check_rnn",
    "residual": "nnlab.scratch.residual:check_residual",
    "optim": "nnlab.scratch.optim:check_optim",
}
SUBJECTS = {  # each topic's help line and table title
    "conv": "2-D convolution (stride, padding): its backward pass vs autograd",
    "pool": "Max and average pooling: their backward pass vs autograd",
    "batchnorm": "Batch normalization (batch statistics, running averages) vs autograd",
    "layernorm": "Layer normalization: its backward pass vs autograd",
    "lstm": "An LSTM cell through time (BPTT) vs autograd",
    "gru": "A GRU cell through time (BPTT) vs autograd",
    "rnn": "A plain (Elman) cell through time (BPTT), tanh and relu, vs autograd",
    "residual": "A residual block, derivative 1 + ∂F/∂z, vs autograd",
    "optim": "The update rules (sgd, momentum, adam, rmsprop, adamw) vs torch.optim",
}
# loss=mse is the quadratic cost; checked on σ outputs (classic backprop) and on the softmax
# outputs nnlab's loss=mse trains with
COSTS = {"cross_entropy": ["cross_entropy"], "mse": ["quadratic", "softmax_quadratic"]}
SEED_HELP = "Seed of the random inputs and parameters."


def _tolerance() -> float:
    from nnlab.scratch.checking import TOLERANCE  # loads torch: only once a check runs

    return TOLERANCE


def _largest(errors: list[float]) -> float:
    """The largest error, NaN if any is NaN (max() would depend on where the NaN sits)."""
    return math.nan if any(math.isnan(e) for e in errors) else max(errors, default=math.nan)


def _verdict(worst: float, count: int, failed: int) -> None:
    tolerance = _tolerance()
    verdict = "PASS" if count and not failed else "FAIL"
    out.print(
        f"{verdict}: {count - failed} of {count} agree; largest relative error {worst:.1e} "
        f"(must be < {tolerance:.0e})"
    )


def report(title: str, rows: list[Row]) -> bool:
    """The table of one topic's Rows (a case named once, on its first row), then the verdict.
    True when there are rows and every one passes: a check that compared nothing fails."""
    table = Table(title=title, header_style="bold")
    for column in ("case", "parameter", "relative error", "result"):
        table.add_column(column, justify="right" if column == "relative error" else "left")
    previous = None
    for row in rows:
        shown = "" if row.case == previous else row.case
        table.add_row(shown, row.param, f"{row.error:.1e}", "PASS" if row.passed else "FAIL")
        previous = row.case
    out.print(table)
    failed = sum(not row.passed for row in rows)
    _verdict(_largest([row.error for row in rows]), len(rows), failed)
    return bool(rows) and not failed


def run_topic(topic: str, seed: int = 0) -> list[Row]:
    """The Rows of TOPICS[topic], imported now (torch loads here, not at start-up)."""
    module, _, function = TOPICS[topic].partition(":")
    check: Callable[..., list[Row]] = getattr(importlib.import_module(module), function)
    return check(seed=seed)


def topic_command(topic: str) -> Callable[..., None]:
    """`nnlab check <topic>`: its table, exit 1 if any row fails."""

    def command(seed: int = typer.Option(0, min=0, help=SEED_HELP)) -> None:
        if not report(f"nnlab check {topic}: {SUBJECTS[topic]}", run_topic(topic, seed)):
            raise typer.Exit(1)

    command.__name__ = f"check_{topic}"
    command.__doc__ = (
        f"{SUBJECTS[topic]}, per parameter, in float64.\n\n"
        f"Several shapes and settings; fails (exit 1) at a relative error of 1e-6 or more.\n\n"
        f"Examples:\n\n  nnlab check {topic}\n\n  nnlab check {topic} --seed 1"
    )
    return command


def check_all(ctx: typer.Context) -> None:
    """Check nnlab's from-scratch math (nnlab/scratch/) against autograd and torch.optim.

    Alone, `nnlab check` runs every topic (backprop, conv, pool, batchnorm, layernorm, lstm,
    gru, rnn, residual, optim) and ends with a summary; exit 1 if any fails.

    Examples:

      nnlab check                       # every topic

      nnlab check conv                  # one topic, its table

      nnlab check backprop activation=sigmoid loss=mse
    """
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        worst, count, failed = _backprop_table([])
    results = {"backprop": (count, worst, bool(count) and not failed)}
    for topic in TOPICS:
        rows = run_topic(topic)
        passed = report(f"nnlab check {topic}: {SUBJECTS[topic]}", rows)
        results[topic] = (len(rows), _largest([r.error for r in rows]), passed)
    table = Table(title="nnlab check: every topic", header_style="bold")
    for column in ("topic", "checks", "largest relative error", "result"):
        table.add_column(column, justify="left" if column in ("topic", "result") else "right")
    for topic, (n, largest, passed) in results.items():
        table.add_row(topic, str(n), f"{largest:.1e}", "PASS" if passed else "FAIL")
    out.print(table)
    failing = [topic for topic, (_, _, passed) in results.items() if not passed]
    if failing:
        out.print(f"FAIL: {', '.join(failing)} (relative error must be < {_tolerance():.0e})")
        raise typer.Exit(1)
    out.print(f"PASS: all {len(results)} topics agree to < {_tolerance():.0e}")


def check_backprop(overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP)) -> None:
    """Gradients from the four backprop equations vs autograd, per layer, in float64.

    Every activation and cost unless activation= or loss= is given; the MLP's sizes come
    from the data (digits: 64 inputs, 10 outputs), model.hidden and model.depth.

    Examples:

      nnlab check backprop

      nnlab check backprop activation=sigmoid loss=mse model.depth=4 model.hidden=32

      nnlab check backprop data=iris            # 4 inputs, 3 outputs
    """
    with user_errors():
        _, _, failed = _backprop_table(overrides or [])
    if failed:
        raise typer.Exit(1)


def _backprop_table(overrides: list[str]) -> tuple[float, int, int]:
    """Print the activation × cost table of per-layer errors; (largest error, cells, failed)."""
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
    table = Table(
        title=f"nnlab check backprop: BP1–BP4 vs autograd, sizes {sizes}", header_style="bold"
    )
    for column in ["activation", "cost", *(f"layer {i + 1}" for i in range(len(sizes) - 1))]:
        table.add_column(column, justify="left" if column in ("activation", "cost") else "right")
    errors: list[float] = []
    for activation in activations:
        for cost in chosen:
            layers = check_backprop(sizes, activation, cost)
            errors += layers
            table.add_row(activation, cost, *(f"{e:.1e}" for e in layers))
    out.print(table)
    failed = sum(not e < _tolerance() for e in errors)  # NaN fails too
    _verdict(_largest(errors), len(errors), failed)
    return _largest(errors), len(errors), failed


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
