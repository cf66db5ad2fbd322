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
from rich.measure import Measurement
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


# Metrics that count (epochs, steps, samples, trials, parameters...): whole numbers by nature,
# even where a library hands them over as floats. Named by the last part of their key.
COUNTS = frozenset(
    {"epoch", "epochs", "step", "steps", "global_step", "samples", "trials", "skipped", "params"}
)


def is_count(key: str) -> bool:
    """Whether the metric `key` (test_samples, epochs, val/samples...) counts something."""
    name = key.rpartition("/")[2]
    return name in COUNTS or name.endswith(("_samples", "_count"))


def fmt(value: Any, key: str = "") -> str:
    """A value for a table: a count as an integer (12, not 12.0000), other numbers to 4
    decimals."""
    if isinstance(value, float):
        if value.is_integer() and is_count(key):
            return str(int(value))
        return f"{value:.4f}"
    return str(value)


WIDEST = 10_000  # columns to measure a table's narrowest whole-word layout in


def print_wide(table: Table, width: int | None = None) -> None:
    """The table with every word whole: in `width` columns (default: the terminal's; 200 when
    piped, where Rich's 80 would squeeze a wide table), or at its natural width where a word
    does not fit them. A path or a run name folded across lines could not be copied; a line
    wider than the terminal is wrapped by the terminal itself and still copies whole. Cells that
    must not break at their spaces either belong in a no_wrap=True column."""
    base = width or (out.width if out.is_terminal else 200)
    needs = Measurement.get(out, out.options.update_width(WIDEST), table)
    # too wide for `base` anyway: then as wide as it likes, rather than squeezing the rest
    Console(width=base if needs.minimum <= base else needs.maximum).print(table)


def warn_plainly(message: str) -> None:
    """A warning for the user: one readable line on stderr, without Python's source excerpt."""
    err.print(f"[bold yellow]Warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


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
            table.add_row(key, fmt(metrics[key], key))
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
            warn_plainly(str(message))
        else:
            original(message, category, *args, **kwargs)

    show.nnlab_plain = True  # type: ignore[attr-defined]
    warnings.showwarning = show
