"""The `nnlab` command. Parses, prints, exits; torch and Lightning are imported inside commands
so that `nnlab --help` stays fast."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from nnlab.errors import UserError

app = typer.Typer(
    help="nnlab: train, compare and understand neural networks.\n\n"
    "Examples:\n\n"
    "  nnlab train                                  # MLP on the bundled digits\n\n"
    "  nnlab train model=cnn optimizer=momentum norm=batch\n\n"
    "  nnlab eval latest                            # test the newest run again\n\n"
    "  nnlab config --list                          # every config group and choice",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)
OVERRIDES_HELP = "Hydra overrides, key=value: model=cnn optimizer.lr=0.01 trainer.max_epochs=20"


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input: one clear paragraph on stderr, exit code 2, no traceback."""
    try:
        yield
    except UserError as e:
        err.print(f"[bold red]Error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _stage_keys(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> list[str]:
    """Metric names in stage order (train, val, test), loss first within each stage."""
    return [
        key
        for prefix in prefixes
        for key in sorted(k for k in metrics if k.startswith(prefix) and not k.endswith("/lr"))
    ]


def results_table(title: str, metrics: dict[str, Any], keys: list[str]) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        if key in metrics:
            table.add_row(key, _fmt(metrics[key]))
    return table


@app.command(context_settings={"ignore_unknown_options": True})
def train(overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP)) -> None:
    """Train a model; every run gets its own directory under outputs/runs/.

    Examples:

      nnlab train

      nnlab train model=cnn optimizer=momentum norm=batch activation=elu trainer.max_epochs=20

      nnlab train data=iris model.hidden=64 loss=mse scheduler=cosine

      nnlab train model=rnn data=digits_seq model.cell=gru

      nnlab train data=mnist data.root=~/datasets model=cnn
    """
    overrides = overrides or []
    with user_errors():
        from nnlab.config import compose_config

        cfg, choices = compose_config(overrides)
        from nnlab.train import TrainingError
        from nnlab.train import train as run_training

        try:
            result = run_training(cfg, choices, overrides)
        except TrainingError as e:
            err.print(f"[bold red]Training failed:[/] {e}", highlight=False, soft_wrap=True)
            err.print(f"Traceback and partial results: {e.run_dir}", highlight=False)
            raise typer.Exit(1) from None
    m = result.metrics
    keys = [*_stage_keys(m, ("train/", "val/", "test/")), "epochs", "params", "wall_time_s"]
    out.print(results_table(f"{choices['model']} on {choices['data']}: {m['status']}", m, keys))
    out.print(f"Run directory: {result.run_dir}", highlight=False, soft_wrap=True)


@app.command("eval", context_settings={"ignore_unknown_options": True})
def eval_(
    target: str = typer.Argument(..., help="Run directory, run name, .ckpt file, or 'latest'."),
    overrides: list[str] | None = typer.Argument(None, help="Overrides of the run's config."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Test a trained model again; the run's saved config rebuilds it. Writes eval.json.

    Examples:

      nnlab eval latest

      nnlab eval outputs/runs/2026-01-01_12-00-00_mlp_digits

      nnlab eval outputs/runs/<run>/checkpoints/last.ckpt

      nnlab eval latest data.root=/mnt/datasets
    """
    with user_errors():
        from nnlab.train import evaluate

        result = evaluate(target, overrides or [], str(output_dir))
    keys = [*_stage_keys(result.metrics, ("test/",)), "epoch", "params", "wall_time_s"]
    out.print(results_table(f"eval {result.metrics['checkpoint']}", result.metrics, keys))
    out.print(f"Run directory: {result.run_dir}", highlight=False, soft_wrap=True)


@app.command(context_settings={"ignore_unknown_options": True})
def config(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    list_groups: bool = typer.Option(False, "--list", help="List config groups and choices."),
) -> None:
    """Print the resolved config, or every config group and its choices.

    Examples:

      nnlab config

      nnlab config model=cnn norm=batch

      nnlab config --list
    """
    with user_errors():
        from omegaconf import OmegaConf

        from nnlab.config import compose_config, default_choices, groups

        if list_groups:
            defaults = default_choices()
            table = Table(title="config groups", header_style="bold")
            table.add_column("group")
            table.add_column("choices (default in bold)")
            for group, choices in groups().items():
                marked = [f"[bold]{c}[/]" if c == defaults.get(group) else c for c in choices]
                table.add_row(group, ", ".join(marked))
            out.print(table)
            return
        cfg, _ = compose_config(overrides or [])
        out.print(OmegaConf.to_yaml(cfg, resolve=True), highlight=False, end="")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
