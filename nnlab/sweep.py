"""Hyperparameter sweeps: Optuna studies over Hydra overrides, in parallel worker processes.

The search space is written in Hydra's override grammar (`optimizer=choice(sgd,adam)`,
`optimizer.lr=tag(log,interval(1e-4,1e-1))`, `model.hidden=range(64,512,step=64)`); every other
override is fixed. Each trial is an ordinary nnlab run under outputs/sweeps/<name>/trials/.
The study lives in Optuna storage (a journal file by default, or any RDB URL), so workers on one
or many machines share it, and running the same command again resumes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nnlab.errors import UserError, choice_error

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
DIRECTIONS = ("maximize", "minimize")
JOURNAL = "journal.log"
TRIALS = "trials"
BEST = "best.yaml"


@dataclass
class Sweep:
    """Everything a worker needs to take part in a sweep (picklable: workers are processes)."""

    name: str
    space: dict[str, Any]  # key → optuna distribution
    grid: dict[str, list[Any]] | None  # key → values, for the grid sampler
    fixed: list[str]
    trials: int
    metric: str
    direction: str
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None
    study: str | None = None
    output_dir: str = "outputs"
    seed: int = 0
    threads: int = 0  # torch threads per worker; 0 = torch's default
    worker: int = 0  # this worker's index: offsets the sampler seed so workers do not all
    # propose the same trials

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) / "sweeps" / self.name

    @property
    def study_name(self) -> str:
        return self.study or self.name


# -- the search space -------------------------------------------------------------------------
def parse_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, list[Any]], list[str]]:
    """(optuna distributions, grid values, fixed overrides) from Hydra override strings."""
    import optuna.distributions as dist
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except HydraException as err:
        raise UserError(f"Cannot read the search space: {err}") from None
    space: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    fixed: list[str] = []
    for override, text in zip(overrides, arguments, strict=True):
        if not override.is_sweep_override():
            fixed.append(text)
            continue
        key, value = override.get_key_element(), override.value()
        if isinstance(value, ChoiceSweep):
            choices = [_plain(v) for v in value.list]
            space[key], grid[key] = dist.CategoricalDistribution(choices), choices
        elif isinstance(value, RangeSweep):
            start, stop, step = value.start, value.stop, value.step
            values = list(_frange(start, stop, step))
            if not values:
                raise UserError(f"{text}: the range holds no values.")
            if all(isinstance(v, int) for v in (start, stop, step)):
                space[key] = dist.IntDistribution(start, values[-1], step=step)
            else:
                space[key] = dist.FloatDistribution(values[0], values[-1], step=step)
            grid[key] = values
        elif isinstance(value, IntervalSweep):
            log = "log" in value.tags
            low, high = value.start, value.end
            if log and low <= 0:
                raise UserError(f"{text}: a log interval needs a positive lower bound.")
            if isinstance(low, int) and isinstance(high, int):
                space[key] = dist.IntDistribution(low, high, log=log)
            else:
                space[key] = dist.FloatDistribution(float(low), float(high), log=log)
        else:
            raise UserError(
                f"{text}: sweep with choice(...), a,b,c, range(...) or interval(...) "
                f"(tag(log, interval(...)) for a log scale)."
            )
    if not space:
        raise UserError(
            "The search space is empty: give at least one swept override, for example "
            "'optimizer=choice(sgd,adam)' 'optimizer.lr=tag(log,interval(1e-4,1e-1))'."
        )
    return space, grid, fixed


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, bool, str)) or value is None else str(value)


def _frange(start: float, stop: float, step: float) -> Iterator[float]:
    value = start
    while (value < stop) if step > 0 else (value > stop):
        yield value
        value += step


def expand_multirun(arguments: list[str]) -> list[list[str]]:
    """Hydra multirun: one override list per combination of the swept values (a,b,c or
    choice/range), in order, like `python app.py -m a=1,2 b=x,y`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except HydraException as err:
        raise UserError(f"Cannot read the overrides: {err}") from None
    axes: list[list[str]] = []
    for override, text in zip(overrides, arguments, strict=True):
        if override.is_sweep_override():
            if override.is_interval_sweep():
                raise UserError(f"{text}: an interval has no finite list of runs; use nnlab sweep.")
            key = override.get_key_element()
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([text])
    return [list(combination) for combination in itertools.product(*axes)]


def overrides_of(params: dict[str, Any], fixed: list[str]) -> list[str]:
    """The `nnlab train` overrides that reproduce a trial."""
    return [*fixed, *(f"{key}={value}" for key, value in params.items())]


# -- the study --------------------------------------------------------------------------------
def open_study(sweep: Sweep) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sweep.storage:
        storage: Any = sweep.storage
    else:
        sweep.directory.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(sweep.directory / JOURNAL)))
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
        if sweep.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            study_name=sweep.study_name,
            storage=storage,
            pruner=pruner,
            direction=sweep.direction,
            load_if_exists=True,
        )
    except ValueError as err:  # e.g. the stored study optimizes the other direction
        raise UserError(f"Cannot use study '{sweep.study_name}': {err}") from None
    except Exception as err:  # a bad storage URL, an unreachable database
        raise UserError(
            f"Cannot open the study storage {sweep.storage!r}: {type(err).__name__}: {err}"
        ) from None
    # Workers, and a resumed sweep, must not replay the same random proposals: the seed moves
    # with the worker index and with the trials the study already has.
    seed = sweep.seed + 1000 * sweep.worker + len(study.get_trials(deepcopy=False))
    if sweep.sampler == "tpe":
        study.sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        # grid: the points are enqueued up front (see run): Optuna's GridSampler stops the study
        # from inside ask/tell loops, and a queue is what resuming and many workers need.
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    return study


def _counts_toward_budget(trial: Any) -> bool:
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get("interrupted", False)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def owed(study: Any, total: int) -> int:
    """Trials still to run: interrupted ones are retried, everything else counts."""
    return max(0, total - sum(_counts_toward_budget(t) for t in study.get_trials(deepcopy=False)))


def release_dead_trials(study: Any) -> int:
    """Mark RUNNING trials whose worker process on this machine is gone as interrupted failures,
    so a resumed sweep runs them again. Trials of live workers (here or elsewhere) are left."""
    from optuna.trial import TrialState

    released = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).partition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)  # run the same point again
            released += 1
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _budget_lock(sweep: Sweep) -> Iterator[None]:
    # Counting the owed trials and asking for a new one must be one step, or two workers could
    # both take the last slot. A file lock makes it exact on one machine; workers on other
    # machines (an RDB storage) may overshoot --trials by at most one trial each.
    sweep.directory.mkdir(parents=True, exist_ok=True)
    with open(sweep.directory / "budget.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- one worker -------------------------------------------------------------------------------
def work(sweep: Sweep) -> None:
    """Run trials until the study has `sweep.trials` of them; safe to run in many processes."""
    import optuna
    from optuna.trial import TrialState

    if sweep.threads:
        import torch

        torch.set_num_threads(sweep.threads)
    study = open_study(sweep)
    while True:
        with _budget_lock(sweep):
            if owed(study, sweep.trials) == 0:
                return
            trial = study.ask(sweep.space)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            value = _objective(sweep, trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)  # a resumed sweep runs the same point again
            return
        except Exception as err:  # a crashed or diverged trial fails alone; the sweep goes on
            trial.set_user_attr("error", _one_line(err))
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}" if not isinstance(err, UserError) else str(err)
    return " ".join(text.split())[:500]


def _objective(sweep: Sweep, trial: Any) -> float:
    import optuna

    from nnlab import runs
    from nnlab.callbacks.pruning import PruningCallback
    from nnlab.config import compose_config
    from nnlab.train import train

    params = {key: trial.params[key] for key in sweep.space}
    overrides = overrides_of(params, sweep.fixed)
    trial.set_user_attr("overrides", overrides)
    name = f"trial-{trial.number:03d}"
    cfg, choices = compose_config([*overrides, f"name={name}", f"output_dir={sweep.output_dir}"])
    pruning = PruningCallback(trial, sweep.metric)
    result = train(cfg, choices, overrides, runs_dir=sweep.directory / TRIALS, callbacks=[pruning])
    assert result.run_dir is not None
    trial.set_user_attr("run", str(result.run_dir))
    metrics = result.metrics
    if metrics["status"] == "interrupted":
        raise KeyboardInterrupt
    for key, value in metrics.items():
        if key.endswith("loss") and isinstance(value, float) and not math.isfinite(value):
            raise RuntimeError(f"{key} is {value}: training diverged")
    if pruning.pruned:
        runs.write_json(result.run_dir / runs.METRICS, {**metrics, "status": "pruned"})
        raise optuna.TrialPruned
    if sweep.metric not in metrics:
        known = sorted(k for k in metrics if "/" in k)
        raise RuntimeError(f"the run has no metric {sweep.metric} (it has {', '.join(known)})")
    return float(metrics[sweep.metric])


# -- the whole sweep --------------------------------------------------------------------------
def check(sweep: Sweep) -> None:
    """Reject bad settings before any worker starts: exit code 2, nothing written."""
    from nnlab.config import compose_config

    if sweep.sampler not in SAMPLERS:
        raise choice_error("--sampler", sweep.sampler, SAMPLERS)
    if sweep.pruner not in PRUNERS:
        raise choice_error("--pruner", sweep.pruner, PRUNERS)
    if sweep.direction not in DIRECTIONS:
        raise choice_error("--direction", sweep.direction, DIRECTIONS)
    if sweep.sampler == "grid":
        missing = [key for key in sweep.space if key not in (sweep.grid or {})]
        if missing:
            raise UserError(
                f"--sampler grid needs a finite set of values for every swept key, but "
                f"{', '.join(missing)} is an interval. Use choice(...) or range(...), or "
                f"--sampler tpe."
            )

    # Every choice and both ends of every interval must make a valid config, so a typo in a
    # key or a value fails here, with exit code 2, rather than as N failed trials.
    def ends(key: str) -> list[Any]:
        values = (sweep.grid or {}).get(key)
        return values if values is not None else [sweep.space[key].low, sweep.space[key].high]

    base = {key: ends(key)[0] for key in sweep.space}
    for key in sweep.space:
        for value in ends(key):
            compose_config(overrides_of({**base, key: value}, sweep.fixed))


def run(sweep: Sweep, jobs: int) -> Any:
    """Run the sweep with `jobs` worker processes; returns the study."""
    import multiprocessing

    study = open_study(sweep)
    release_dead_trials(study)
    if sweep.sampler == "grid" and not study.get_trials(deepcopy=False):
        keys = list(sweep.space)
        grid = itertools.product(*((sweep.grid or {})[key] for key in keys))
        for values in itertools.islice(grid, sweep.trials):
            study.enqueue_trial(dict(zip(keys, values, strict=True)))
    if jobs == 1:
        work(sweep)
    else:
        context = multiprocessing.get_context("spawn")  # fork after torch import is unsafe
        workers = [
            context.Process(target=work, args=(replace(sweep, worker=i),)) for i in range(jobs)
        ]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        except KeyboardInterrupt:
            for worker in workers:
                worker.join(timeout=60)  # they got the Ctrl-C too and stop their trial
            raise
    return study  # its storage reads the workers' trials back on every query


def write_best(sweep: Sweep, study: Any) -> Path | None:
    """best.yaml: the overrides that reproduce the best trial (`nnlab train --from-sweep`)."""
    from omegaconf import OmegaConf

    try:
        best = study.best_trial
    except ValueError:
        return None
    path = sweep.directory / BEST
    record = {
        "overrides": best.user_attrs.get("overrides", overrides_of(best.params, sweep.fixed)),
        "value": best.value,
        "metric": sweep.metric,
        "trial": best.number,
        "run": best.user_attrs.get("run"),
    }
    OmegaConf.save(OmegaConf.create(record), path)
    return path


def best_overrides(name: str, output_dir: str = "outputs") -> list[str]:
    """The overrides in outputs/sweeps/<name>/best.yaml."""
    from omegaconf import OmegaConf

    path = Path(output_dir) / "sweeps" / name / BEST
    if not path.exists():
        root = Path(output_dir) / "sweeps"
        known = (
            sorted(p.name for p in root.iterdir() if (p / BEST).exists()) if root.is_dir() else []
        )
        raise UserError(
            f"No finished sweep '{name}' ({path} does not exist). Sweeps with a best trial: "
            f"{', '.join(known) or 'none yet'}."
        )
    return list(OmegaConf.load(path).overrides)
