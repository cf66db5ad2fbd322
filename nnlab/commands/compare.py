"""`nnlab compare`: two or more runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from nnlab.console import fmt, out, print_wide, user_errors
from nnlab.runs import lower_is_better


def compare(
    targets: list[str] = typer.Argument(
        ..., metavar="RUN", help="Two or more: run directories, run names (name=...) or 'latest'."
    ),
    out_file: Path | None = typer.Option(
        None,
        "--out",
        help="The overlay figure, .png, .svg or .pdf [default: <output-dir>/compare.png].",
    ),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """The settings that differ between runs, their final metrics side by side, and one figure
    overlaying their per-epoch curves (the main metric's and the loss's, validation where the
    runs validated).

    Examples:

      nnlab compare outputs/runs/2026-11-23_15-33-50_mlp_digits latest

      nnlab compare small_lr big_lr --out lr.png    # runs trained with name=...
    """
    from nnlab import compare as comparing

    figure = out_file or output_dir / "compare.png"
    with user_errors():
        comparing.check_out(figure)
        run_dirs = comparing.resolve_runs(targets, output_dir)
        found = comparing.compare(run_dirs)
        drawn = comparing.write_overlay(found, figure)
    for label, run in zip(found.labels, found.runs, strict=True):
        # soft_wrap: a path cut across lines could not be copied
        out.print(f"[bold]{escape(label)}[/]: {escape(str(run))}", highlight=False, soft_wrap=True)
    # out.width: 2-3 runs fit 80 columns, and a word (a path, a _target_) is never folded
    if found.settings:
        print_wide(_table("settings that differ", found.labels, found.settings, False), out.width)
    else:
        out.print("The runs' settings are the same.")
    print_wide(_table("final metrics", found.labels, found.metrics, True), out.width)
    for note in found.notes:
        out.print(f"Note: {escape(note)}", highlight=False, soft_wrap=True)  # notes name files
    if drawn:
        shown = f"Curves ({', '.join(drawn)}): {escape(str(figure))}"
        out.print(shown, highlight=False, soft_wrap=True)


def _table(title: str, labels: list[str], rows: dict[str, list[Any]], metrics: bool) -> Table:
    """One row per key, one column per run; a metric's best value in bold."""
    table = Table(title=title, header_style="bold", title_justify="left")
    table.add_column("")
    for label in labels:
        table.add_column(escape(label), justify="right")
    for key, values in rows.items():
        # settings exactly as configured (1e-05, not 0.0000); metrics to 4 decimals, counts whole
        cells = [escape(fmt(v, key) if metrics else str(v)) for v in values]
        winner = _best(key, values) if metrics else None
        if winner is not None:
            cells[winner] = f"[bold]{cells[winner]}[/]"
        table.add_row(escape(key), *cells)
    return table


def _best(key: str, values: list[Any]) -> int | None:
    """The index of the best of a metric's values (lowest for losses, errors and times)."""
    numbers = [(v, i) for i, v in enumerate(values) if isinstance(v, int | float)]
    if "/" not in key or len(numbers) < 2 or len({v for v, _ in numbers}) < 2:
        return None
    return (min if lower_is_better(key) else max)(numbers)[1]
