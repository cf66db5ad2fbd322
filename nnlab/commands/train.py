"""`nnlab train` and `nnlab eval`: run the planned trainings, test a trained model, and report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from nnlab.commands import overrides_argument, run_argument
from nnlab.console import (
    err,
    out,
    print_wide,
    results_table,
    show_warnings_plainly,
    stage_keys,
    stop,
    user_errors,
)

if TYPE_CHECKING:
    from nnlab.plan import Plan, RunSpec

Finished = tuple[Any, "RunSpec"]  # a run's TrainResult and the spec it was trained from


def train(
    overrides: list[str] | None = overrides_argument(),
    multirun: bool = typer.Option(
        False, "-m", "--multirun", help="One run per combination of comma-separated values."
    ),
    from_sweep: str | None = typer.Option(
        None, help="Start from the best trial's overrides of outputs/sweeps/<name>/best.yaml."
    ),
    resume: str | None = typer.Option(
        None,
        help="Continue an interrupted (or finished) run from its last.ckpt: a run directory, "
        "name or 'latest'; overrides such as trainer.max_epochs=50 apply. Also: resume=latest.",
    ),
) -> None:
    """Train a model; every run gets its own directory under outputs/runs/.

    Examples:

      nnlab train

      nnlab train model=cnn optimizer=momentum norm=batch activation=elu trainer.max_epochs=20

      nnlab train data=iris model.hidden=64 loss=mse scheduler=cosine

      nnlab train model=rnn data=digits_seq model.cell=gru

      nnlab train data=mnist data.root=~/datasets model=cnn

      nnlab train -m optimizer=sgd,adam norm=none,batch      # 4 runs

      nnlab train -m seed=0,1,2 optimizer=sgd,adam           # mean ± std per optimizer

      nnlab train experiment=vanishing_gradients             # a lesson: conf/experiment/

      nnlab train --from-sweep mlp_digits trainer.max_epochs=30

      nnlab train --resume latest trainer.max_epochs=60      # continue the newest run

      nnlab train trainer.steps_per_execution=1   # one batch per Lightning step (default 32)

      nnlab train callbacks.checkpoint_interval_s=0   # checkpoint files every epoch (default: 10 s)
    """
    with user_errors():
        from nnlab.plan import plan_runs

        show_warnings_plainly()
        plan = plan_runs(overrides or [], multirun=multirun, from_sweep=from_sweep, resume=resume)
        from nnlab.startup import process_rank

        rank = process_rank()  # a distributed run's other processes leave reporting to the first
        if not rank:
            _announce(plan)
        results = _train_all(plan, rank)
    if rank:
        return
    if plan.experiment is not None:
        _print_experiment(plan.experiment, results, plan.runs[0].cfg.output_dir)
    else:
        _print_runs(results, plan.multirun)
    if plan.many and len(results) < len(plan.runs):
        raise typer.Exit(1)


def _announce(plan: Plan) -> None:
    """One line, as soon as the config is checked, saying what is being built: loading torch and
    Lightning takes seconds, and a terminal should not sit blank meanwhile."""
    spec = plan.runs[0]
    what = f"{spec.choices.get('model', '?')} on {spec.choices.get('data', '?')}"
    if spec.resume_dir is not None:
        line = f"Resuming {spec.resume_dir.name}: {what}"
    elif len(plan.runs) > 1:
        line = f"Training {len(plan.runs)} runs, the first {what}"
    else:
        epochs = spec.cfg.trainer.max_epochs
        line = f"Training {what}, {epochs} epoch{'s' * (epochs != 1)}, seed {spec.cfg.seed}"
    err.print(f"{escape(line)} …", style="dim", highlight=False, soft_wrap=True)


def _train_all(plan: Plan, rank: int) -> list[Finished]:
    """Train each run in turn. A failure ends the command unless several runs were asked for;
    an interrupt always does, with the command that resumes the run."""
    from nnlab.errors import epochs
    from nnlab.startup import heavy_imports

    with heavy_imports():
        # looked up at call time, so a probe patched onto nnlab.train.train (benchmarks) is used
        from nnlab.train import RunInterrupted, TrainingError
        from nnlab.train import train as run_training

    results = []
    for spec in plan.runs:
        try:
            result = run_training(spec.cfg, spec.choices, spec.overrides, resume=spec.resume_dir)
            results.append((result, spec))
        except TrainingError as e:
            where = f" in process {rank}" if rank else ""  # which writes no error.log
            err.print(
                f"[bold red]Training failed{where}:[/] {escape(str(e))}",
                highlight=False,
                soft_wrap=True,
            )
            if not rank:
                logged = (e.run_dir / "error.log").exists()
                shown = "Traceback and partial" if logged else "Partial"
                err.print(f"{shown} results: {e.run_dir}", highlight=False, soft_wrap=True)
            if not plan.many:
                raise typer.Exit(1) from None
        except RunInterrupted as e:
            if rank:
                raise typer.Exit(130) from None  # the first process says how to resume
            stop(
                f"[bold yellow]Interrupted[/] after {epochs(e.epochs_done)}. "
                f"{e.run_dir}/checkpoints/last.ckpt keeps the last one; continue with: "
                f"nnlab train --resume {e.run_dir}",
                130,
            )
    return results


def _with_intervals(table: Table, m: dict[str, Any]) -> Table:
    """The table, with a row for each test accuracy's 95% interval for the test set's size:
    how precisely the test set measures this model."""
    from nnlab import noise

    for metric in noise.INTERVAL_METRICS:
        bounds = noise.run_interval(m, metric)
        if bounds:
            samples = m[noise.INTERVAL_METRICS[metric]]
            interval = f"{noise.fmt_interval(bounds)} ({samples} samples)"
            table.add_row(f"{metric} 95% CI", escape(interval))
    return table


def _print_runs(results: list[Finished], multirun: bool) -> None:
    for result, spec in results:
        m = result.metrics
        keys = [*stage_keys(m, ("train/", "val/", "test/")), "epochs", "params"]
        title = f"{spec.choices['model']} on {spec.choices['data']}: {m['status']}"
        if multirun:
            title += f" ({' '.join(spec.overrides)})"
        out.print(_with_intervals(results_table(title, m, [*keys, "wall_time_s"]), m))
        out.print(f"Run directory: {result.run_dir}", highlight=False, soft_wrap=True)
    if multirun and len(results) > 1:
        _print_settings(results)


def _grouped(results: list[Finished]) -> list[tuple[str, list[Finished]]]:
    """The results by setting (the runs of one setting differ only by seed), each setting
    named by its preset label and the overrides that tell it apart from the others."""
    from nnlab import noise

    groups = noise.grouped(results, lambda finished: finished[1].setting)
    shared = set.intersection(*(set(key[1:]) for key in groups)) if groups else set()
    return [
        (" ".join([key[0], *(o for o in key[1:] if o not in shared)]).strip() or "(all)", group)
        for key, group in groups.items()
    ]


def _metrics(groups: list[tuple[str, list[Finished]]]) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(label, [result.metrics for result, _ in group]) for label, group in groups]


def _print_settings(results: list[Finished]) -> None:
    """One row per setting of a multirun, its runs over seeds together: mean ± std of the final
    metrics, n, and a test accuracy's 95% interval for the test set's size."""
    from nnlab import noise

    rows = _metrics(_grouped(results))
    metrics = [m for m in results[0][0].metrics if m.startswith(("val/", "test/"))]
    table = Table(title="by setting (mean ± std over seeds)", header_style="bold")
    for column in ["setting", "n", *metrics]:
        table.add_column(column, justify="left" if column == "setting" else "right")
    for label, runs in rows:
        cells = (escape(noise.cell(runs, m)) for m in metrics)
        table.add_row(escape(label), str(len(runs)), *cells)
    print_wide(table)
    every = [m for _, runs in rows for m in runs]
    legend = noise.legend(every, metrics, any(len(runs) > 1 for _, runs in rows))
    if legend:
        out.print(legend, highlight=False, markup=False)


def _print_experiment(experiment: Any, results: list[Finished], output_dir: str) -> None:
    """One row per setting of an experiment preset (its runs over the preset's seeds together):
    its label and the preset's report columns, mean ± std over the seeds."""
    from nnlab import experiments

    groups = _grouped(results)
    rows = _metrics(groups)
    headers, cells, legend = experiments.report_table(experiment, rows)
    # one run per setting: its directory; several: `nnlab runs` lists them
    directories = all(len(group) == 1 for _, group in groups)
    table = Table(title=f"experiment {experiment.name}", header_style="bold")
    for column in [*headers, *(["run directory"] if directories else [])]:
        left = column in ("run", "run directory")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for row, (_, group) in zip(cells, groups, strict=True):
        table.add_row(*map(escape, row), *([str(group[0][0].run_dir)] if directories else []))
    print_wide(table)
    if legend:
        out.print(legend, highlight=False, markup=False)
    if not directories:
        out.print(f"Each run: nnlab runs --filter tags={experiment.name}", highlight=False)
    if rows:
        path = experiments.write_markdown(experiment, rows, output_dir)
        out.print(f"Comparison table (Markdown): {path}", highlight=False, soft_wrap=True)


def eval_(
    target: str = run_argument("Run directory, run name, .ckpt file, or 'latest'."),
    overrides: list[str] | None = overrides_argument("Overrides of the run's config."),
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
        from nnlab import run_log, runs
        from nnlab.plan import check_saved_run

        show_warnings_plainly()
        # a run that is not there, or a mistyped override: answered before torch loads
        home = runs.home_of(target, str(output_dir))
        check_saved_run(target, overrides or [], str(output_dir))
        from nnlab.startup import heavy_imports

        with heavy_imports():
            from nnlab.evaluate import evaluate

        with run_log.captured(home):
            result = evaluate(target, overrides or [], str(output_dir))
    from nnlab.startup import process_rank

    if process_rank():  # a distributed run's other processes leave reporting to the first
        return
    keys = [*stage_keys(result.metrics, ("test/",)), "epoch", "params", "wall_time_s"]
    table = results_table("eval", result.metrics, keys)
    print_wide(_with_intervals(table, result.metrics), out.width)
    if result.run_dir is not None:
        _print_gradient_summary(result.run_dir)
    out.print(f"Checkpoint: {result.metrics['checkpoint']}", highlight=False, soft_wrap=True)
    out.print(f"Run directory: {result.run_dir}", highlight=False, soft_wrap=True)


def _print_gradient_summary(run_dir: Path) -> None:
    """The gradient-flow callback's record of training: each layer's mean ‖∂C/∂w‖ over the last
    epoch, relative to the output layer's (tiny early-layer ratios mean vanishing gradients)."""
    from nnlab import runs

    metrics = runs.read_json(run_dir / runs.METRICS)
    norms: list[tuple[str, float]] = metrics.get("grad_norms") or []
    if not norms:
        return
    last = norms[-1][1] or 1e-30
    table = Table(
        title="gradient flow in training (last epoch, mean over steps)", header_style="bold"
    )
    table.add_column("layer")
    table.add_column("‖∂C/∂w‖", justify="right")
    table.add_column("÷ last layer", justify="right")
    for name, norm in norms:
        table.add_row(name, f"{norm:.3g}", f"{norm / last:.3g}")
    out.print(table)
    warned = metrics.get("warnings") or []
    verdict = f"warnings: {', '.join(warned)}" if warned else "no vanishing or exploding gradients"
    out.print(
        f"first/last layer gradient ratio {metrics['grad_ratio_first_last']:.2g}; {verdict}",
        highlight=False,
    )
