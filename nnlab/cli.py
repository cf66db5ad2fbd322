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


RUN_METRICS = ("val/acc", "test/acc", "test/loss", "test/mae", "test/sample_score")


@app.command("runs")
def runs_(
    sort: str | None = typer.Option(None, help="Metric to sort by, best first: val/acc ..."),
    filter_: list[str] | None = typer.Option(
        None, "--filter", help="key=value, repeatable: model=cnn, optimizer.lr=0.01, status=failed"
    ),
    last: int | None = typer.Option(None, min=1, help="Only the N most recent runs."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Table of runs: settings, key metrics, wall time and status (finished, failed, ...).

    Examples:

      nnlab runs

      nnlab runs --sort val/acc --filter model=cnn --last 20

      nnlab runs --filter status=failed
    """
    from nnlab import runs

    with user_errors():
        found = [runs.summary(run) for run in runs.list_runs(output_dir)]
        chosen = runs.select(found, filter_ or [], sort, last)
    if not found:
        out.print(f"No runs in {runs.runs_root(output_dir)} yet: `nnlab train` makes one.")
        return
    metrics = [m for m in RUN_METRICS if any(m in s for s in chosen)]
    if sort and sort not in metrics:
        metrics.insert(0, sort)
    table = Table(title=f"{len(chosen)} of {len(found)} runs", header_style="bold")
    for column in ("run", "model", "data", "optimizer", "norm", *metrics, "wall s", "status"):
        table.add_column(column, justify="right" if "/" in column or column == "wall s" else "left")
    for s in chosen:
        settings = s["settings"]
        table.add_row(
            s["run"],
            *(str(settings.get(group, "")) for group in ("model", "data", "optimizer", "norm")),
            *(_fmt(s[m]) if m in s else "" for m in metrics),
            f"{s['wall_time_s']:.1f}" if "wall_time_s" in s else "",
            s["status"],
        )
    # Piped output gets 80 columns from Rich; a run table needs more to stay readable.
    Console(width=None if out.is_terminal else 200).print(table)


@app.command()
def board(
    port: int = typer.Option(6006, help="Port to serve on; 0 picks a free one."),
    host: str = typer.Option("127.0.0.1", help="Interface; 0.0.0.0 shares it on the network."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Start TensorBoard on every run under outputs/ and print its URL; Ctrl-C stops it.

    Examples:

      nnlab board

      nnlab board --port 6007 --output-dir /mnt/experiments
    """
    import time

    with user_errors():
        if not output_dir.is_dir():
            raise UserError(
                f"{output_dir} does not exist yet: train a run first (`nnlab train`), or point "
                f"--output-dir at the folder that holds runs/."
            )
        from tensorboard import program

        server = program.TensorBoard()
        server.configure(
            argv=[None, "--logdir", str(output_dir), "--port", str(port), "--host", host]
        )
        try:
            url = server.launch()
        except program.TensorBoardServerException as e:
            raise UserError(
                f"TensorBoard cannot serve on {host}:{port} ({e.msg}). Choose another port with "
                f"--port, or --port 0 for any free one."
            ) from None
    out.print(f"TensorBoard: {url}  (runs in {output_dir}; Ctrl-C stops it)", highlight=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        out.print("TensorBoard stopped.")


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
