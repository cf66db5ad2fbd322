"""`nnlab runs`, `nnlab board` and `nnlab config`: look at runs and configs, train nothing."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from nnlab.commands import OVERRIDES_HELP
from nnlab.console import err, fmt, out, print_wide, user_errors
from nnlab.errors import UserError

RUN_METRICS = (
    "val/acc", "test/acc", "test/loss", "test/mae", "test/sample_score", "test/map_50",
)  # fmt: skip


def runs_(
    sort: str | None = typer.Option(None, help="Metric to sort by, best first: val/acc ..."),
    filter_: list[str] | None = typer.Option(
        None, "--filter", help="key=value, repeatable: model=cnn, optimizer.lr=0.01, status=failed"
    ),
    last: int | None = typer.Option(None, min=1, help="Only the N most recent runs."),
    sweep: str | None = typer.Option(None, help="List the trials of this sweep instead."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Table of runs: settings, key metrics, wall time and status (finished, failed, ...).

    Examples:

      nnlab runs

      nnlab runs --sort val/acc --filter model=cnn --last 20

      nnlab runs --filter status=failed

      nnlab runs --sweep mlp_digits --sort val/acc
    """
    from nnlab import runs

    with user_errors():
        root = output_dir / "sweeps" / sweep / "trials" if sweep else runs.runs_root(output_dir)
        found = [runs.summary(run) for run in runs.list_runs(output_dir, root)]
        chosen = runs.select(found, filter_ or [], sort, last)
    if not found:
        out.print(f"No runs in {root} yet: `nnlab train` makes one.")
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
            *(fmt(s[m]) if m in s else "" for m in metrics),
            f"{s['wall_time_s']:.1f}" if "wall_time_s" in s else "",
            s["status"],
        )
    print_wide(table)


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
    out.print(f"TensorBoard: {url}  (runs in {output_dir}; Ctrl-C stops it)", highlight=False)
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
        return server.launch()
    except program.TensorBoardServerException as e:
        raise UserError(
            f"TensorBoard cannot serve on {host}:{port} ({e.msg}). Choose another port with "
            f"--port, or --port 0 for any free one."
        ) from None


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
