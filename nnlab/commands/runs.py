"""`nnlab runs`, `nnlab board` and `nnlab config`: look at runs and configs, train nothing."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nnlab.commands import overrides_argument
from nnlab.console import err, out, print_wide, user_errors
from nnlab.errors import UserError, choice_error

if TYPE_CHECKING:
    from nnlab.run_table import Table as RunsTable


def runs_(
    sort: str | None = typer.Option(None, help="Metric to sort by, best first: val/acc ..."),
    filter_: list[str] | None = typer.Option(
        None, "--filter", help="key=value, repeatable: model=cnn, optimizer.lr=0.01, status=failed"
    ),
    last: int | None = typer.Option(None, min=1, help="Only the N most recent runs."),
    group_by: str | None = typer.Option(
        None,
        "--group-by",
        help="KEY[,KEY]: one row per value (group choices or config keys: optimizer, "
        "model,norm, optimizer.lr) with each metric's mean ± std over its runs, and n.",
    ),
    wide: bool = typer.Option(False, "--wide", help="Every column, whatever the terminal width."),
    format_: str | None = typer.Option(
        None, "--format", help="csv, json or markdown: every column, values in full, for scripts."
    ),
    sweep: str | None = typer.Option(None, help="List the trials of this sweep instead."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Table of runs: name, status, settings, key metrics, wall time. Fits the terminal: the
    columns that do not fit are named below it (--wide shows them all).

    A test accuracy shows its 95% interval for the test set's size: 0.978±0.019 on 270 test
    images means anything from 0.952 to 0.990 fits that result.

    Examples:

      nnlab runs

      nnlab runs --sort val/acc --filter model=cnn --last 20

      nnlab runs --group-by optimizer              # mean ± std over each optimizer's runs

      nnlab runs --filter status=failed --wide

      nnlab runs --format csv > runs.csv

      nnlab runs --sweep mlp_digits --sort val/acc
    """
    from nnlab import run_table, runs

    with user_errors():
        if format_ is not None and format_ not in run_table.FORMATS:
            raise choice_error("--format", format_, run_table.FORMATS)
        root = output_dir / "sweeps" / sweep / "trials" if sweep else runs.runs_root(output_dir)
        found = [runs.summary(run) for run in runs.list_runs(output_dir, root)]
        chosen = runs.select(found, filter_ or [], sort, last)
        keys = runs.group_keys(group_by, found) if group_by is not None else []
    if format_ is not None:
        whole = (
            run_table.group_records(chosen, keys, sort)
            if keys
            else [run_table.record(s) for s in chosen]
        )
        typer.echo(run_table.render(whole, format_), nl=False)
        return
    if not found:
        out.print(
            f"No runs in {root} yet: `nnlab train` makes one.", highlight=False, soft_wrap=True
        )
        return
    _print_runs(chosen, f"{len(chosen)} of {len(found)} runs", keys, sort, wide)


def _print_runs(
    chosen: list[dict[str, Any]], title: str, keys: list[str], sort: str | None, wide: bool
) -> None:
    """The runs (or their groups) in the terminal's width, or every column for --wide."""
    from nnlab import run_table

    # a fresh console: COLUMNS is read as it starts (piped output: 80 unless COLUMNS says)
    width = Console().width
    if keys:
        table = run_table.grouped_table(chosen, keys, sort, None if wide else width)
    elif wide:
        table = run_table.wide_table(chosen, title, sort)
    else:
        table = run_table.runs_table(chosen, title, sort, width)
    _print_table(table, None if wide else width)


def _print_table(table: RunsTable, width: int | None) -> None:
    """The table in `width` columns (None: the terminal's, 200 piped), or wider where a run's
    name or directory needs it: a name folded across lines could not be copied."""
    shown = Table(title=table.title, header_style="bold")
    for header in table.headers:
        right = "/" in header or header in ("wall s", "n")
        shown.add_column(
            escape(header), justify="right" if right else "left", no_wrap=header == "run"
        )
    for row in table.rows:
        shown.add_row(*(escape(cell) for cell in row))
    print_wide(shown, width)
    for note in table.notes:
        out.print(escape(note), highlight=False)


def board(
    port: int = typer.Option(6006, help="Port to serve on; 0 picks a free one."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Interface to serve on. The default serves this machine only; any other address "
        "(0.0.0.0 is every one) lets everyone who reaches it read every run: TensorBoard has "
        "no login.",
    ),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Start TensorBoard on every run under outputs/ and print its URL; Ctrl-C stops it.

    TensorBoard has no authentication: to look from another machine, keep the default --host
    and tunnel over SSH (ssh -L 6006:127.0.0.1:6006 you@this-machine, then open
    http://localhost:6006) rather than serving on a network address.

    Examples:

      nnlab board

      nnlab board --port 6007 --output-dir /mnt/experiments
    """
    import time

    with user_errors():
        url = _launch_tensorboard(port, host, output_dir)
    if not _is_local(host):
        _warn_open_board(url, port, host, output_dir)
    shown = f"TensorBoard: {url}  (runs in {output_dir}; Ctrl-C stops it)"
    out.print(shown, highlight=False, markup=False, soft_wrap=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        out.print("TensorBoard stopped.")


def _is_local(host: str) -> bool:
    import ipaddress

    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: only localhost is sure to stay on this machine
        return False


def _launch_tensorboard(port: int, host: str, output_dir: Path) -> str:
    """TensorBoard serving in this process's background threads; its URL."""
    if not output_dir.is_dir():
        raise UserError(
            f"{output_dir} does not exist yet: train a run first (`nnlab train`), or point "
            f"--output-dir at the folder that holds runs/."
        )
    from tensorboard import program

    server = program.TensorBoard()
    server.configure(argv=[None, "--logdir", str(output_dir), "--port", str(port), "--host", host])
    try:
        with _without_advisory():
            return server.launch()
    except program.TensorBoardServerException as e:
        raise UserError(
            f"TensorBoard cannot serve on {host}:{port} ({e.msg}). Choose another port with "
            f"--port, or --port 0 for any free one."
        ) from None


# TensorBoard's note that it reads events with its (Rust) data server: nothing to act on.
ADVISORY = re.compile(r"\n?NOTE: Using experimental fast data loading logic\..*?\n\n", re.DOTALL)


@contextmanager
def _without_advisory() -> Iterator[None]:
    """What TensorBoard writes to stderr as it starts, less its data-loading advisory."""
    said = io.StringIO()
    try:
        with redirect_stderr(said):
            yield
    finally:
        sys.stderr.write(ADVISORY.sub("", said.getvalue()))


def _warn_open_board(url: str, port: int, host: str, output_dir: Path) -> None:
    from urllib.parse import urlsplit

    port = urlsplit(url).port or port  # the one picked when --port 0
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
    err.print(
        f"[bold yellow]Warning:[/] TensorBoard has no authentication: anyone who can reach "
        f"{escape(shown)}:{port} can read every run in {escape(str(output_dir))} (configs, "
        f"metrics, sample images). Unless that network is yours alone, stop it (Ctrl-C), "
        f"keep the default --host 127.0.0.1 and reach it from your machine through an SSH "
        f"tunnel: ssh -L 6006:127.0.0.1:{port} you@this-machine, then open "
        f"http://localhost:6006.",
        highlight=False,
        soft_wrap=True,
    )


def config(
    overrides: list[str] | None = overrides_argument(),
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
