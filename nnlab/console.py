"""Everything the commands print goes through here: results on stdout, errors and warnings on
stderr, bad input turned into one paragraph and an exit code instead of a traceback.

Torch-free on purpose: the CLI imports it at start-up, and `nnlab --help` must stay fast."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nnlab.errors import UserError, storage_failure

out = Console()
err = Console(stderr=True)


def stop(message: str, code: int) -> NoReturn:
    """One paragraph on stderr (Rich markup; user text escaped by the caller), then exit."""
    err.print(message, highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input: one clear paragraph on stderr, exit code 2, no traceback. A write the machine
    refuses (full disk, read-only path): the same, with exit code 1."""
    try:
        yield
    except UserError as e:
        # escape: the message quotes user input, and `model=[/]` is not Rich markup
        stop(f"[bold red]Error:[/] {escape(str(e))}", 2)
    except OSError as e:
        problem = storage_failure(e)
        if problem is None:
            raise
        stop(
            f"[bold red]Error:[/] {escape(problem)}. Free some space, or give a writable "
            f"output_dir=. Files already written stay whole: nnlab replaces a run's files only "
            f"with complete new versions.",
            1,
        )


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_wide(table: Table) -> None:
    # Piped output gets 80 columns from Rich; a wide table needs more to stay readable.
    Console(width=None if out.is_terminal else 200).print(table)


def stage_keys(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> list[str]:
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
            table.add_row(key, fmt(metrics[key]))
    return table


def show_warnings_plainly() -> None:
    """nnlab's notices (nnlab.errors.Notice: gradient flow, saved configs, skipped annotations)
    are for the user: one readable line, no source excerpt. Installed once per process (train
    may run many times in one, as in tests)."""
    import warnings

    from nnlab.errors import Notice

    original = warnings.showwarning
    if getattr(original, "nnlab_plain", False):
        return

    def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, Notice):
            err.print(f"[bold yellow]Warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            original(message, category, *args, **kwargs)

    show.nnlab_plain = True  # type: ignore[attr-defined]
    warnings.showwarning = show
