"""The `nnlab` command: the Typer app and the commands it offers (nnlab/commands/).

Nothing here imports torch, Lightning, Hydra or Optuna: the commands do, inside their bodies,
so that `nnlab --help` and bad input stay fast."""

from __future__ import annotations

import typer

from nnlab.commands import check, predict, runs, sweep, train
from nnlab.commands.compare import compare

app = typer.Typer(
    help="nnlab: train, compare and understand neural networks.\n\n"
    "Examples:\n\n"
    "  nnlab train                                  # MLP on the bundled digits\n\n"
    "  nnlab train model=cnn optimizer=momentum norm=batch\n\n"
    "  nnlab eval latest                            # test the newest run again\n\n"
    "  nnlab sweep sweep=mlp_digits --jobs 2        # Optuna search, 2 workers\n\n"
    "  nnlab runs --sort val/acc                    # compare runs\n\n"
    "  nnlab config --list                          # every config group and choice",
    no_args_is_help=True,
    # --install-completion / --show-completion; the overrides and run arguments complete
    # through nnlab.completion, which reads conf/ and outputs/ and never imports torch
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(shown: bool) -> None:
    if shown:
        import nnlab

        typer.echo(f"nnlab {nnlab.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print nnlab's version."
    ),
) -> None:
    """The app's own options (the commands carry the rest)."""


# Commands that take Hydra overrides: `model=cnn` and `-m`-style values are arguments to them.
OVERRIDES = {"ignore_unknown_options": True}

app.command(context_settings=OVERRIDES)(train.train)
app.command("eval", context_settings=OVERRIDES)(train.eval_)
app.command(context_settings=OVERRIDES)(sweep.sweep)
app.command("runs")(runs.runs_)
app.command()(compare)
app.command()(runs.board)
app.command(context_settings=OVERRIDES)(runs.config)
app.command()(predict.predict)
app.command()(predict.export)

# `nnlab check` alone runs every topic (its callback); `nnlab check <topic>` runs one
check_app = typer.Typer(rich_markup_mode=None)
check_app.callback(invoke_without_command=True)(check.check_all)
check_app.command("backprop", context_settings=OVERRIDES)(check.check_backprop)
for _topic in check.TOPICS:
    check_app.command(_topic, short_help=check.SUBJECTS[_topic])(check.topic_command(_topic))
app.add_typer(check_app, name="check")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
