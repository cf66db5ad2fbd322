"""The `nnlab` command. Parses, prints, exits; torch and Lightning are imported inside commands
so that `nnlab --help` stays fast."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nnlab.errors import UserError, storage_failure

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
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)
OVERRIDES_HELP = "Hydra overrides, key=value: model=cnn optimizer.lr=0.01 trainer.max_epochs=20"


def _stop(message: str, code: int) -> NoReturn:
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
        _stop(f"[bold red]Error:[/] {escape(str(e))}", 2)
    except OSError as e:
        problem = storage_failure(e)
        if problem is None:
            raise
        _stop(
            f"[bold red]Error:[/] {escape(problem)}. Free some space, or give a writable "
            f"output_dir=. Files already written stay whole: nnlab replaces a run's files only "
            f"with complete new versions.",
            1,
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _print_wide(table: Table) -> None:
    # Piped output gets 80 columns from Rich; a wide table needs more to stay readable.
    Console(width=None if out.is_terminal else 200).print(table)


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
def train(
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
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

      nnlab train experiment=vanishing_gradients             # a lesson: conf/experiment/

      nnlab train --from-sweep mlp_digits trainer.max_epochs=30

      nnlab train --resume latest trainer.max_epochs=60      # continue the newest run

      nnlab train trainer.steps_per_execution=1   # one batch per Lightning step (default 32)

      nnlab train callbacks.checkpoint_interval_s=0   # checkpoint files every epoch (default: 10 s)
    """
    overrides = overrides or []
    with user_errors():
        from nnlab import experiments
        from nnlab import sweep as sweeps
        from nnlab.config import compose_config

        experiment, overrides = experiments.take_experiment(overrides)
        resume, overrides = _take_resume(resume, overrides)
        if resume and (multirun or experiment or from_sweep):
            raise UserError(
                "--resume continues one run: leave out -m, experiment= and --from-sweep."
            )
        if from_sweep:
            overrides = [*sweeps.best_overrides(from_sweep), *overrides]
        labels = list(experiment.runs) if experiment else [""]
        many = multirun or experiment is not None
        combinations = [
            (label, experiments.run_overrides(experiment, label, c) if experiment else c)
            for label in labels
            for c in (sweeps.expand_multirun(overrides) if multirun else [overrides])
        ]
        from nnlab.restore import run_to_resume
        from nnlab.train import RunInterrupted, TrainingError, process_rank
        from nnlab.train import train as run_training

        _show_warnings_plainly()
        if resume:
            from nnlab.config import take_argument

            output_dirs, _ = take_argument(overrides, "output_dir")  # the last one wins
            output_dir = output_dirs[-1] if output_dirs else "outputs"
            # the overrides given when resuming (more epochs, ...) join the run's own
            run_dir, cfg, choices, every = run_to_resume(resume, overrides, output_dir)
            configs = [((cfg, choices), "", every, run_dir)]
        else:
            # Every combination must compose before the first run starts.
            configs = [(compose_config(c), label, c, None) for label, c in combinations]

        rank = process_rank()  # a distributed run's other processes leave reporting to the first
        results = []
        for (cfg, choices), label, combination, resumed in configs:
            try:
                result = run_training(cfg, choices, combination, resume=resumed)
                results.append((result, choices, label, combination))
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
                    err.print(f"{shown} results: {e.run_dir}", highlight=False)
                if not many:
                    raise typer.Exit(1) from None
            except RunInterrupted as e:
                if rank:
                    raise typer.Exit(130) from None  # the first process says how to resume
                _stop(
                    f"[bold yellow]Interrupted[/] after {e.epochs_done} complete epochs. "
                    f"{e.run_dir}/checkpoints/last.ckpt keeps the last one; continue with: "
                    f"nnlab train --resume {e.run_dir}",
                    130,
                )
    if rank:
        return  # the other processes of a distributed run: the first one reports
    if experiment is not None:
        _print_experiment(experiment, results, configs[0][0][0].output_dir)
    else:
        for result, choices, _, combination in results:
            m = result.metrics
            keys = [*_stage_keys(m, ("train/", "val/", "test/")), "epochs", "params"]
            title = f"{choices['model']} on {choices['data']}: {m['status']}"
            if multirun:
                title += f" ({' '.join(combination)})"
            out.print(results_table(title, m, [*keys, "wall_time_s"]))
            out.print(f"Run directory: {result.run_dir}", highlight=False, soft_wrap=True)
    if many and len(results) < len(configs):
        raise typer.Exit(1)


def _take_resume(option: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """--resume X, or resume=X among the overrides (Hydra-style), and the other overrides."""
    from nnlab.config import take_argument

    given, rest = take_argument(overrides, "resume")
    targets = [*([option] if option else []), *given]
    if len(targets) > 1:
        raise UserError(f"Give one run to resume; got {', '.join(targets)}.")
    return (targets[0] if targets else None), rest


def _print_experiment(experiment: Any, results: list[tuple[Any, ...]], output_dir: str) -> None:
    """One row per run of an experiment preset: its label and the preset's report columns."""
    from nnlab import experiments

    table = Table(title=f"experiment {experiment.name}", header_style="bold")
    for column in ["run", *experiment.report, "run directory"]:
        table.add_column(column, justify="left" if column in ("run", "run directory") else "right")
    # A run is named by its label plus the user's overrides that differ between runs (-m values)
    extras = [
        c[len(experiments.run_overrides(experiment, label, [])) :] for _, _, label, c in results
    ]
    shared = set.intersection(*map(set, extras)) if extras else set()
    rows = []
    for (result, _, label, _), extra in zip(results, extras, strict=True):
        name = " ".join([label, *(e for e in extra if e not in shared)])
        rows.append((name, result.metrics))
        values = [experiments.fmt(experiments.value(result.metrics, c)) for c in experiment.report]
        table.add_row(name, *values, str(result.run_dir))
    _print_wide(table)
    if rows:
        path = experiments.write_markdown(experiment, rows, output_dir)
        out.print(f"Comparison table (Markdown): {path}", highlight=False, soft_wrap=True)


def _show_warnings_plainly() -> None:
    """Gradient-flow warnings and notes on saved configs are for the user: one readable line,
    no source excerpt. Installed once per process (train may run many times in one, as in
    tests)."""
    import warnings

    from nnlab.callbacks.grad_flow import GradientFlowWarning
    from nnlab.config import FilledFromDefaults

    original = warnings.showwarning
    if getattr(original, "nnlab_plain", False):
        return

    def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, GradientFlowWarning | FilledFromDefaults):
            err.print(f"[bold yellow]Warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            original(message, category, *args, **kwargs)

    show.nnlab_plain = True  # type: ignore[attr-defined]
    warnings.showwarning = show


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

        _show_warnings_plainly()
        result = evaluate(target, overrides or [], str(output_dir))
    keys = [*_stage_keys(result.metrics, ("test/",)), "epoch", "params", "wall_time_s"]
    out.print(results_table(f"eval {result.metrics['checkpoint']}", result.metrics, keys))
    if result.run_dir is not None:
        _print_gradient_summary(result.run_dir)
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


def _sweep_arguments(arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split `sweep=<name>` / `sweep.<key>=<value>` settings from the search-space overrides;
    settings come from conf/sweep/<name>.yaml first, then from the command line."""
    from nnlab.config import load_preset

    settings: dict[str, Any] = {}
    rest: list[str] = []
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key == "sweep":
            preset = load_preset("sweep", value)
            space = preset.pop("space", {}) or {}
            rest = [
                *(preset.pop("fixed", []) or []),
                *(f"{k}={v}" for k, v in space.items()),
                *rest,
            ]
            settings = {**preset, "name": value, **settings}
        elif key.startswith("sweep."):
            settings[key.removeprefix("sweep.")] = value
        else:
            rest.append(argument)
    return settings, rest


@app.command(context_settings={"ignore_unknown_options": True})
def sweep(
    space: list[str] | None = typer.Argument(
        None, help="Swept and fixed overrides; sweep=<name> loads conf/sweep/<name>.yaml."
    ),
    trials: int | None = typer.Option(None, min=1, help="Total trials across all workers [20]."),
    jobs: int = typer.Option(1, min=1, help="Worker processes on this machine."),
    name: str | None = typer.Option(None, help="Sweep name: outputs/sweeps/<name>/ [sweep]."),
    sampler: str | None = typer.Option(
        None, help="tpe, random or grid [tpe; with --resume, the stored one]."
    ),
    pruner: str | None = typer.Option(
        None, help="median or none [median; with --resume, the stored one]."
    ),
    storage: str | None = typer.Option(
        None, help="Optuna RDB URL (postgresql://..., sqlite:///...); default: a journal file."
    ),
    study: str | None = typer.Option(None, help="Study name in the storage [the sweep name]."),
    seed: int = typer.Option(0, help="Sampler seed."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs and sweeps live."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the existing study of this name as stored (its search space, metric "
        "and settings); never start a new one. A different search space is refused.",
    ),
) -> None:
    """Search hyperparameters with Optuna; every trial is a normal run. Re-run to resume.

    A sweep is its search space: the same command again resumes it; a different space under the
    same --name is refused (choose another --name).

    Examples:

      nnlab sweep 'optimizer=choice(sgd,momentum,adam)' 'optimizer.lr=tag(log,interval(1e-4,1e-1))'
      'model.hidden=range(64,512,step=64)' trainer.max_epochs=10 --trials 30 --jobs 2

      nnlab sweep sweep=mlp_digits --jobs 2

      nnlab sweep 'norm=none,batch,layer' sweep.metric=val/loss --sampler grid

      nnlab sweep sweep=mlp_digits --storage postgresql://user@db/nnlab --study mlp

      nnlab sweep --name mlp_digits --resume --trials 30   # same space, more trials
    """
    with user_errors():
        from nnlab import runs
        from nnlab import sweep as sweeps

        settings, arguments = _sweep_arguments(space or [])
        sweep_name = name or str(settings.get("name", "sweep"))
        if resume and not arguments:  # continue the study as stored: its space and settings
            stored, arguments = sweeps.stored_settings(sweep_name, study, storage, str(output_dir))
            settings = {**stored, **settings}
        sampler = sampler or str(settings.get("sampler", "tpe"))
        pruner = pruner or str(settings.get("pruner", "median"))
        distributions, grid, fixed = sweeps.parse_space(arguments)
        metric = str(settings.get("metric", "val/acc"))
        lower = runs.lower_is_better(metric)
        total = trials or int(settings.get("trials", 20))
        if sampler == "grid":
            total = min(total, math.prod(len(v) for v in grid.values()) if grid else total)
        job = sweeps.Sweep(
            name=sweep_name,
            space=distributions,
            grid=grid,
            fixed=fixed,
            trials=total,
            metric=metric,
            direction=str(settings.get("direction", ("maximize", "minimize")[lower])),
            sampler=sampler,
            pruner=pruner,
            storage=storage,
            study=study,
            output_dir=str(output_dir),
            seed=seed,
            threads=max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0,
            swept=[a for a in arguments if a not in fixed],
            resume=resume,
        )
        sweeps.check(job)
        prepared = sweeps.prepare(job)  # refuses another search under this name: nothing written
        where = sweeps.mask_url(job.storage) if job.storage else job.directory / sweeps.JOURNAL
        out.print(
            f"Sweep {job.name}: {job.trials} trials, {jobs} worker(s), {job.sampler} sampler, "
            f"{job.direction} {job.metric}. Study: {where}",
            highlight=False,
        )
        try:
            result = sweeps.run(job, jobs, prepared)
        except KeyboardInterrupt:
            err.print("Sweep stopped. Run the same command again to resume it.")
            raise typer.Exit(130) from None
        best_file = sweeps.write_best(job, result)
    _print_sweep(job, result, best_file)


def _print_sweep(job: Any, study: Any, best_file: Path | None) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=job.direction == "maximize")
    table = Table(title=f"best trials of {job.name} ({job.metric})", header_style="bold")
    for column in ("trial", job.metric, "overrides"):
        table.add_column(column, justify="right" if column != "overrides" else "left")
    for t in done[:5]:
        table.add_row(
            str(t.number), _fmt(t.value), " ".join(f"{k}={v}" for k, v in t.params.items())
        )
    _print_wide(table)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    out.print(", ".join(f"{n} {s}" for s, n in states.items() if n), highlight=False)
    reruns = {t.user_attrs.get("retry_of"): t.number for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL:
            rerun = f"rerun as trial {reruns[t.number]}" if t.number in reruns else "will be rerun"
            why = f"interrupted ({rerun})" if t.user_attrs.get("interrupted") else ""
            out.print(
                f"failed trial {t.number}: {why or t.user_attrs.get('error', '?')}",
                highlight=False,
                soft_wrap=True,
            )
    if len(done) >= 2:
        import optuna

        try:
            importances = optuna.importance.get_param_importances(study)
            out.print(
                "parameter importances: "
                + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()),
                highlight=False,
            )
        except (RuntimeError, ValueError):
            pass  # e.g. every completed trial has the same value
    if best_file is not None:
        out.print(
            f"Best overrides: {best_file}  (nnlab train --from-sweep {job.name})",
            highlight=False,
            soft_wrap=True,
        )


check_app = typer.Typer(
    help="Check the library against nnlab's from-scratch math (nnlab/scratch/).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(check_app, name="check")
TOLERANCE = 1e-6  # float64 agreement demanded of the hand-written math


def _check_table(title: str, columns: list[str], rows: list[list[str]], worst: float) -> None:
    table = Table(title=title, header_style="bold")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    verdict = "PASS" if worst < TOLERANCE else "FAIL"
    out.print(f"{verdict}: largest relative error {worst:.1e} (must be < {TOLERANCE:.0e})")
    if worst >= TOLERANCE:
        raise typer.Exit(1)


@check_app.command("backprop", context_settings={"ignore_unknown_options": True})
def check_backprop(overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP)) -> None:
    """Gradients from the four backprop equations vs autograd, per layer, in float64.

    Every activation and cost unless activation= or loss= is given; the MLP's sizes come
    from model.hidden and model.depth (digits: 64 inputs, 10 outputs).

    Examples:

      nnlab check backprop

      nnlab check backprop activation=sigmoid loss=mse model.depth=4 model.hidden=32
    """
    overrides = overrides or []
    with user_errors():
        from nnlab.config import compose_config
        from nnlab.scratch.backprop import ACTIVATIONS, check_backprop

        cfg, choices = compose_config(overrides)
        if choices.get("model") != "mlp":
            raise UserError("nnlab check backprop checks the MLP: leave model= at mlp.")
        typed = {o.partition("=")[0] for o in overrides}
        activations = [cfg.activation.kind] if "activation" in typed else list(ACTIVATIONS)
        # loss=mse is the quadratic cost; checked on σ outputs (classic backprop) and on the
        # softmax outputs nnlab's loss=mse trains with
        costs = {"cross_entropy": ["cross_entropy"], "mse": ["quadratic", "softmax_quadratic"]}
        chosen = costs[cfg.loss] if "loss" in typed else [c for cs in costs.values() for c in cs]
        sizes = [64, *[cfg.model.hidden] * cfg.model.depth, 10]
        rows, worst = [], 0.0
        for activation in activations:
            for cost in chosen:
                errors = check_backprop(sizes, activation, cost)
                worst = max(worst, *errors)
                rows.append([activation, cost, *(f"{e:.1e}" for e in errors)])
    layers = [f"layer {i + 1}" for i in range(len(sizes) - 1)]
    _check_table(
        f"backprop vs autograd, sizes {sizes}", ["activation", "cost", *layers], rows, worst
    )


@check_app.command("optim")
def check_optim(
    steps: int = typer.Option(10, min=1, help="Updates to compare."),
    weight_decay: float = typer.Option(1e-2, min=0.0, help="L2 weight decay λ."),
) -> None:
    """The hand-written update rules (sgd, momentum, adam, with L2) vs torch.optim.

    Examples:

      nnlab check optim

      nnlab check optim --steps 50 --weight-decay 0
    """
    from nnlab.scratch.optim import RULES, check_optim

    errors = {rule: check_optim(rule, steps, weight_decay) for rule in RULES}
    rows = [[rule, "torch.optim", f"{error:.1e}"] for rule, error in errors.items()]
    title = f"update rules vs torch.optim, {steps} steps, weight decay {weight_decay}"
    _check_table(title, ["rule", "against", "max rel. error"], rows, max(errors.values()))


RUN_METRICS = (
    "val/acc", "test/acc", "test/loss", "test/mae", "test/sample_score", "test/map_50",
)  # fmt: skip


@app.command("runs")
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
            *(_fmt(s[m]) if m in s else "" for m in metrics),
            f"{s['wall_time_s']:.1f}" if "wall_time_s" in s else "",
            s["status"],
        )
    _print_wide(table)


@app.command()
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
    import ipaddress
    import time
    from urllib.parse import urlsplit

    try:
        local = host.lower() == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: only localhost is sure to stay on this machine
        local = False
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
    if not local:
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


@app.command()
def predict(
    target: str = typer.Argument(..., help="Detection run (directory, name, .ckpt, 'latest')."),
    images: list[str] = typer.Argument(..., help="Image files or folders of images."),
    min_score: float = typer.Option(0.5, min=0.0, max=1.0, help="Keep detections this sure."),
    out_dir: Path | None = typer.Option(None, help="Where to write [<run>/predictions/]."),
    output_dir: Path = typer.Option(Path("outputs"), help="Where runs live."),
) -> None:
    """Detect objects with a trained model=faster_rcnn run: writes each image with its boxes
    drawn, and detections.json (class, score, box as x0 y0 x1 y1 pixels) per image.

    Images over 64 megapixels (raise with NNLAB_MAX_IMAGE_PIXELS), or not PNG, JPEG, BMP, GIF,
    TIFF, WebP or PPM, are refused before anything is decoded.

    Examples:

      nnlab predict latest photo.png

      nnlab predict outputs/runs/<run> images/ --min-score 0.8

      nnlab predict latest street.jpg --out-dir drawn/
    """
    with user_errors():
        from nnlab.predict import DETECTIONS
        from nnlab.predict import predict as run_predict

        result = run_predict(target, images, str(output_dir), min_score, out_dir)
    table = Table(title=f"detections (score ≥ {min_score})", header_style="bold")
    for column in ("image", "objects", "classes"):
        table.add_column(column, justify="right" if column == "objects" else "left")
    for image, found in result.images.items():
        classes = sorted({d["class"] for d in found})
        table.add_row(image, str(len(found)), ", ".join(classes))
    _print_wide(table)
    out.print(f"Drawn images and {DETECTIONS}: {result.out_dir}", highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
