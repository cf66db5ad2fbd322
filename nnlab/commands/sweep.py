"""`nnlab sweep`: an Optuna search in which every trial is a normal run."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from nnlab.commands import overrides_argument
from nnlab.console import fmt, out, print_wide, stop, user_errors
from nnlab.errors import UserError, choice_error

# What the command reads from `sweep.<key>=<value>` and from a preset: anything else would be
# silently ignored (sweep.trails=5), so it is refused.
SETTINGS = ("name", "metric", "direction", "trials", "sampler", "pruner")
# A preset (conf/sweep/<name>.yaml) also holds the search space and the overrides every trial
# shares; on the command line those are plain overrides.
PRESET_KEYS = (*SETTINGS, "space", "fixed")


def sweep(
    space: list[str] | None = overrides_argument(
        "Swept and fixed overrides; sweep=<name> loads conf/sweep/<name>.yaml."
    ),
    trials: int | None = typer.Option(
        None, min=1, help="Total trials across all workers and machines [20]."
    ),
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
    heartbeat: int | None = typer.Option(
        None,
        min=1,
        max=3600,
        help="With --storage: seconds between a worker's signs of life; a trial silent for twice "
        "that is run again by another worker [the study's; 60 for a new one].",
    ),
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
    same --name is refused (choose another --name). Trials are scored by the task's own metric
    (val/acc for classifiers, val/loss for regression, ...) unless sweep.metric= names another.
    Exit 1 when no trial completed; Ctrl-C: exit 130, with the command that resumes the sweep.

    Examples:

      nnlab sweep 'optimizer=choice(sgd,momentum,adam)' 'optimizer.lr=tag(log,interval(1e-4,1e-1))'
      'model.hidden=range(64,512,step=64)' trainer.max_epochs=10 --trials 30 --jobs 2

      nnlab sweep sweep=mlp_digits --jobs 2

      nnlab sweep 'norm=none,batch,layer' sweep.metric=val/loss --sampler grid

      nnlab sweep sweep=mlp_digits --storage postgresql://user@db/nnlab --study mlp

      nnlab sweep --name mlp_digits --resume --trials 30   # same space, more trials
    """
    with user_errors():
        from nnlab.config import check_swept

        settings, arguments = sweep_arguments(space or [])
        check_swept(arguments)  # typos answered before Optuna and torch load
        from nnlab import study as studies

        sweep_name = name or str(settings.get("name", "sweep"))
        if resume and not arguments:  # continue the study as stored: its space and settings
            stored, arguments = studies.stored_settings(sweep_name, study, storage, str(output_dir))
            settings = {**stored, **settings}
        job = _job(
            sweep_name,
            settings,
            arguments,
            {"trials": trials, "sampler": sampler, "pruner": pruner},
            storage=storage,
            study=study,
            heartbeat=heartbeat,
            output_dir=str(output_dir),
            seed=seed,
            threads=max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0,
            resume=resume,
        )
        job, result, stopped = _run(job, jobs)
    _print_sweep(job, result, _best_file(job, result))
    _finish(job, result, jobs, stopped)


def sweep_arguments(arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split `sweep=<name>` / `sweep.<key>=<value>` settings from the search-space overrides;
    settings come from conf/sweep/<name>.yaml first, then from the command line. UserError on
    a setting the sweep would not read."""
    from nnlab.presets import load_preset

    settings: dict[str, Any] = {}
    rest: list[str] = []
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key == "sweep":
            preset = load_preset("sweep", value)
            unknown = [k for k in preset if k not in PRESET_KEYS]
            if unknown:
                raise choice_error(f"key in conf/sweep/{value}.yaml", unknown[0], PRESET_KEYS)
            space = preset.pop("space", {}) or {}
            rest = [
                *(preset.pop("fixed", []) or []),
                *(f"{k}={v}" for k, v in space.items()),
                *rest,
            ]
            settings = {**preset, "name": value, **settings}
        elif key.startswith("sweep."):
            settings[_setting(key)] = value
        else:
            rest.append(argument)
    return settings, rest


def _setting(key: str) -> str:
    """The setting named by a `sweep.<setting>` key."""
    setting = key.removeprefix("sweep.")
    if setting in ("space", "fixed"):
        raise UserError(
            f"{key} is a part of a conf/sweep/<name>.yaml preset; on the command line give the "
            f"swept and fixed overrides themselves: 'optimizer.lr=interval(1e-4,1e-1)' "
            f"trainer.max_epochs=10."
        )
    if setting not in SETTINGS:
        raise choice_error("sweep setting", key, [f"sweep.{s}" for s in SETTINGS])
    return setting


def _job(
    name: str,
    settings: dict[str, Any],
    arguments: list[str],
    options: dict[str, Any],
    **where: Any,
) -> Any:
    """The sweep to run: `options` given on the command line first, then `settings` (preset,
    sweep.<key>=, stored study), then defaults; `where` (storage, seed, ...) as given."""
    from nnlab.search_space import parse_space
    from nnlab.study import Sweep

    sampler = options["sampler"] or str(settings.get("sampler", "tpe"))
    pruner = options["pruner"] or str(settings.get("pruner", "median"))
    distributions, grid, fixed = parse_space(arguments)
    total = options["trials"] or _whole_number("sweep.trials", settings.get("trials", 20))
    if sampler == "grid":
        total = min(total, math.prod(len(v) for v in grid.values()) if grid else total)
    return Sweep(
        name=name,
        space=distributions,
        grid=grid,
        fixed=fixed,
        trials=total,
        metric=str(settings.get("metric", "")),  # "": the task's (sweep.fit_to_task)
        direction=str(settings.get("direction", "")),
        sampler=sampler,
        pruner=pruner,
        swept=[a for a in arguments if a not in fixed],
        **where,
    )


def _run(job: Any, jobs: int) -> tuple[Any, Any, bool]:
    """The sweep scored by its task's metric, its study, and whether it stopped before its
    end (Ctrl-C); bad settings, and a metric the task does not record, refused before any
    trial."""
    from nnlab import study as studies
    from nnlab import sweep as sweeps
    from nnlab.storage_urls import mask_url

    try:
        job = sweeps.fit_to_task(job, sweeps.check(job))
        job, prepared = studies.prepare(job)  # refuses another search here: nothing written
    except KeyboardInterrupt:
        stop("[bold yellow]Sweep stopped[/] before its first trial.", 130)
    where = mask_url(job.storage) if job.storage else job.directory / studies.JOURNAL
    out.print(
        f"Sweep {job.name}: {job.trials} trials, {jobs} worker(s), {job.sampler} sampler, "
        f"{job.direction} {job.metric}. Study: {where}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        return job, sweeps.run(job, jobs, prepared), False
    except KeyboardInterrupt:
        return job, prepared, True


def _best_file(job: Any, study: Any) -> Path | None:
    from nnlab import sweep as sweeps

    with user_errors():  # a full disk
        return sweeps.write_best(job, study)


def _finish(job: Any, study: Any, jobs: int, stopped: bool) -> None:
    """Exit 130 with the command that resumes a stopped sweep, 1 when no trial completed."""
    from optuna.trial import TrialState

    from nnlab import study as studies

    trials = study.get_trials(deepcopy=False)
    if stopped:
        left = studies.owed(study, job.trials)
        stop(
            f"[bold yellow]Sweep stopped[/] with {left} of {job.trials} trials still to run. "
            f"Continue it with: {escape(studies.resume_command(job, jobs))}",
            130,
        )
    if not any(t.state == TrialState.COMPLETE for t in trials):
        stop(
            f"[bold red]No trial completed[/] ({_counts(trials)}), so the sweep found nothing: "
            f"see why above.",
            1,
        )


def _print_sweep(job: Any, study: Any, best_file: Path | None) -> None:
    from optuna.trial import TrialState
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=job.direction == "maximize")
    if done:
        table = Table(title=f"best trials of {job.name} ({job.metric})", header_style="bold")
        for column in ("trial", job.metric, "overrides"):
            table.add_column(column, justify="right" if column != "overrides" else "left")
        for t in done[:5]:
            params = " ".join(f"{k}={v}" for k, v in t.params.items())
            table.add_row(str(t.number), fmt(t.value, job.metric), params)
        print_wide(table)
    out.print(_counts(trials), highlight=False)
    _print_failures(trials)
    if len(done) >= 2:
        _print_importances(study)
    if best_file is not None:
        out.print(
            f"Best overrides: {best_file}  (nnlab train --from-sweep {job.name})",
            highlight=False,
            soft_wrap=True,
        )


def _state(trial: Any, retried: set[Any]) -> str:
    """complete, pruned, failed, interrupted (a failure the sweep runs again), running, ...
    `retried`: the numbers of the trials queued again (study.retried_numbers)."""
    from optuna.trial import TrialState

    from nnlab.study import interrupted

    if trial.state == TrialState.FAIL:
        return "interrupted" if interrupted(trial, retried) else "failed"
    return str(trial.state.name.lower())


def _counts(trials: list[Any]) -> str:
    """'3 complete, 1 interrupted': how many trials are in each state (but the points queued
    to run, which the sweep counts as still to run)."""
    from nnlab.study import retried_numbers

    retried = retried_numbers(trials)
    states = [s for s in (_state(t, retried) for t in trials) if s != "waiting"]
    return ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(sorted(states))) or "0 trials"


def _print_failures(trials: list[Any]) -> None:
    from nnlab.study import retried_numbers

    retried = retried_numbers(trials)
    reruns = {t.user_attrs.get("retry_of"): t for t in trials}
    for t in trials:
        state = _state(t, retried)
        if state == "interrupted":
            rerun = reruns.get(t.number)
            ran = rerun is not None and _state(rerun, retried) != "waiting"
            why = f"rerun as trial {rerun.number}" if ran else "to be run again from its start"
        elif state == "failed":
            why = t.user_attrs.get("error", "?")
        else:
            continue
        out.print(f"{state} trial {t.number}: {why}", highlight=False, soft_wrap=True)


def _print_importances(study: Any) -> None:
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():  # about its estimate's method, nothing to act on
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
        out.print(
            "parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()),
            highlight=False,
        )
    except (RuntimeError, ValueError):
        pass  # e.g. every completed trial has the same value


def _whole_number(key: str, value: Any) -> int:
    """A setting that counts something, from a preset or `sweep.<key>=`: a positive integer."""
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise UserError(f"Bad value for {key}: {value!r}. It must be a whole number of 1 or more.")
    return number
