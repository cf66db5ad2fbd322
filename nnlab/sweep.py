"""Hyperparameter sweeps: worker processes, on one machine or many, that run trials of a study
(nnlab/study.py) until it has exactly --trials of them (claimed under nnlab/claims.py's lock).
Each trial is an ordinary nnlab run under outputs/sweeps/<name>/trials/. The trials of a worker
that dies are run again by the others (nnlab/recovery.py)."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from nnlab import runs
from nnlab.errors import UserError, choice_error, did_you_mean
from nnlab.recovery import (
    BEAT_ATTR,
    beating,
    first_beat,
    reap_lock_files,
    release_dead_trials,
    requeue,
    worker_lock,
)
from nnlab.search_space import overrides_of
from nnlab.study import (
    BEST,
    DIRECTIONS,
    PRUNERS,
    SAMPLERS,
    TRIALS,
    Sweep,
    claim_lock,
    open_study,
    owed,
    prepare,
    quiet_heartbeat,
)

INTERRUPTED = 130  # a worker process's exit code after Ctrl-C, as a shell's
GRACE_S = 3.0  # how long stopped workers get to record their trials before they are told to stop


# -- one worker -------------------------------------------------------------------------------
def work(sweep: Sweep) -> None:
    """Run trials until the study has `sweep.trials` of them; safe to run in many processes, on
    many machines. With an RDB storage, a worker with nothing left to claim waits for the trials
    still running elsewhere: should one's worker die, it runs that trial again."""
    if sweep.threads:
        import torch

        torch.set_num_threads(sweep.threads)
    study = open_study(sweep)
    with worker_lock(sweep) as me:
        while True:
            with claim_lock(sweep):
                release_dead_trials(study, sweep)  # a worker that died mid-sweep
                if owed(study, sweep.trials) == 0:
                    if not (sweep.storage and _running(study)):
                        return
                    trial, beat = None, None
                else:
                    trial, beat = _claim(sweep, study, me)
            if trial is None:
                time.sleep(min(5, sweep.heartbeat or 5))
                continue
            with beating(sweep, beat) if beat is not None else contextlib.nullcontext():
                _run_trial(sweep, study, trial)


def _claim(sweep: Sweep, study: Any, me: str) -> tuple[Any, int | None]:
    """A new trial (or a queued point) for this worker, and its heartbeat's trial id (RDB).
    Call it under the claim lock."""
    with quiet_heartbeat():
        trial = study.ask(sweep.space)
    beat = first_beat(sweep, study, trial) if sweep.storage else None
    trial.set_user_attr("worker", me)  # named last: a nameless RUNNING trial is a dead claim
    return trial, beat


def _running(study: Any) -> bool:
    """Whether a trial that a heartbeat watches is still running (on any machine)."""
    from optuna.trial import TrialState

    return any(
        t.state == TrialState.RUNNING and BEAT_ATTR in t.user_attrs
        for t in study.get_trials(deepcopy=False)
    )


def _run_trial(sweep: Sweep, study: Any, trial: Any) -> None:
    """Run one claimed trial and record how it ended."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        try:
            value = _objective(sweep, trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except KeyboardInterrupt:
            with _deaf_to_interrupts(), contextlib.suppress(UpdateFinishedTrialError):
                # A second Ctrl-C must not cut the record short; a resumed sweep reruns it.
                trial.set_user_attr("interrupted", True)
                requeue(study, trial.number, trial.params, set())
                study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as err:  # a crashed or diverged trial fails alone; the sweep goes on
            trial.set_user_attr("error", _one_line(err))
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    except UpdateFinishedTrialError:
        # This worker was silent for longer than the heartbeat's grace (a stalled machine), so
        # another one failed the trial and queued it again: the rerun's result counts, once.
        pass


@contextlib.contextmanager
def _deaf_to_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers, and only it gets Ctrl-C
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:  # None: a handler set outside Python, which cannot be put back; Python's own then
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _work_in_process(sweep: Sweep) -> None:
    """A worker process's life: Ctrl-C ends it with exit code 130, without a traceback."""
    try:
        work(sweep)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}" if not isinstance(err, UserError) else str(err)
    return " ".join(text.split())[:500]


def _objective(sweep: Sweep, trial: Any) -> float:
    import optuna

    from nnlab.config import compose_config
    from nnlab.startup import heavy_imports

    with heavy_imports():
        from nnlab.callbacks.pruning import PruningCallback
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
    value = float(metrics[sweep.metric])
    if math.isnan(value):  # Optuna would fail the trial without a word of why
        raise RuntimeError(f"{sweep.metric} is nan")
    return value


# -- the whole sweep --------------------------------------------------------------------------
def check(sweep: Sweep) -> list[Any]:
    """Reject bad settings before any worker starts: exit code 2, nothing written. Returns the
    configs of the space's corners (every choice, both ends of every interval)."""
    from nnlab.config import compose_config

    if sweep.sampler not in SAMPLERS:
        raise choice_error("--sampler", sweep.sampler, SAMPLERS)
    if sweep.pruner not in PRUNERS:
        raise choice_error("--pruner", sweep.pruner, PRUNERS)
    if sweep.direction and sweep.direction not in DIRECTIONS:
        raise choice_error("--direction", sweep.direction, DIRECTIONS)
    if sweep.heartbeat is not None and not sweep.storage:
        raise UserError(
            f"--heartbeat {sweep.heartbeat} is for sweeps in a --storage database, whose workers "
            f"may be on other machines. Without --storage, the workers share this machine and "
            f"their lock files tell a dead one at once: leave --heartbeat out."
        )
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
    where = f"output_dir={sweep.output_dir}"  # as the trials have it (a GAN's judge cache)
    return [
        compose_config([*overrides_of({**base, key: value}, sweep.fixed), where])[0]
        for key in sweep.space
        for value in ends(key)
    ]


# -- the metric trials are scored by ----------------------------------------------------------
def fit_to_task(sweep: Sweep, configs: list[Any]) -> Sweep:
    """The sweep scored by its task: the task's own metric (ClassificationTask's val/acc,
    RegressionTask's val/loss, ...) and direction where none was given, and a given metric
    checked against what the task records: UserError rather than trials that train fully and
    then find no such metric. The task may depend on the data (data=table infers regression from
    its target), so the data and task of each data/model pair in `configs` are built once, here.
    """
    tasks = _tasks(configs)
    metric = sweep.metric or _default_metric(tasks)
    for task, _, recorded in tasks:
        if metric not in recorded:
            raise UserError(
                f"sweep.metric={metric}: {task} does not record that metric, so every trial "
                f"would train and then fail. Its metrics: {', '.join(sorted(recorded))}."
                + did_you_mean(metric, recorded)
            )
    modes = {mode for _, (monitor, mode), _ in tasks if monitor == metric}
    lower = modes == {"min"} if modes else runs.lower_is_better(metric)
    return replace(sweep, metric=metric, direction=sweep.direction or DIRECTIONS[lower])


Recorded = tuple[str, tuple[str, str], list[str]]  # task class, its (monitor, mode), its metrics


def _tasks(configs: list[Any]) -> list[Recorded]:
    """What each config's task records, building each data/model pair's task once."""
    import json

    from omegaconf import OmegaConf

    from nnlab.startup import heavy_imports

    with heavy_imports():
        from nnlab.build import build, check_monitor
        from nnlab.tasks.supervised import SupervisedTask
        from nnlab.trainer import quiet_lightning

    quiet_lightning()  # a GAN's task trains its judge the first time
    built: dict[str, tuple[str, tuple[str, str], list[str], bool]] = {}
    found = []
    for cfg in configs:
        pair = [OmegaConf.to_container(cfg.data, resolve=True), cfg.model.get("_target_")]
        key = json.dumps(pair, sort_keys=True, default=str)
        if key not in built:
            _, task = build(cfg)
            check_monitor(cfg, task)  # before trial 1, not at the end of each trial's epoch 1
            supervised = isinstance(task, SupervisedTask)
            built[key] = (type(task).__name__, tuple(task.monitor), task.metric_names(), supervised)
        name, monitor, names, supervised = built[key]
        if cfg.trainer.limit_val_batches == 0:  # validation off: no val/ metric ever comes
            names = [n for n in names if not n.startswith("val/")]
            name = f"{name} with validation off (trainer.limit_val_batches=0)"
        if cfg.eval_train and supervised:  # the test metrics again, on the training split
            names = [*names, *(f"trainset/{n[5:]}" for n in names if n.startswith("test/"))]
        found.append((name, monitor, names))
    return found


def _default_metric(tasks: list[Recorded]) -> str:
    monitors = sorted({f"{task}: {monitor}" for task, (monitor, _), _ in tasks})
    if len(monitors) > 1:
        shared = set.intersection(*(set(recorded) for _, _, recorded in tasks))
        raise UserError(
            f"The trials train different tasks ({', '.join(monitors)}), so there is no one "
            f"metric to score them by: name one they all record with sweep.metric=... "
            f"({', '.join(sorted(shared)) or 'they share none'})."
        )
    task, (monitor, _), recorded = tasks[0]
    if monitor not in recorded:
        raise UserError(
            f"{task} records no {monitor}, the metric its runs are scored by. Name another "
            f"with sweep.metric=... ({', '.join(sorted(recorded))}), or validate."
        )
    return monitor


def run(sweep: Sweep, jobs: int, study: Any = None) -> Any:
    """Run the sweep with `jobs` worker processes; returns the study. `study`: what prepare()
    returned, when the caller prepared the sweep (the sweep prepare() returned) already.
    KeyboardInterrupt when it stopped (Ctrl-C, a killed worker) with trials still to run: the
    stopped ones are marked interrupted, to be run again on resume."""
    if study is None:
        sweep, study = prepare(sweep)
    with claim_lock(sweep):
        release_dead_trials(study, sweep)  # a killed run of this sweep: run its trials again
        reap_lock_files(sweep)
        if sweep.sampler == "grid" and not study.get_trials(deepcopy=False):
            keys = list(sweep.space)
            grid = itertools.product(*((sweep.grid or {})[key] for key in keys))
            for values in itertools.islice(grid, sweep.trials):
                study.enqueue_trial(dict(zip(keys, values, strict=True)))
    try:
        if jobs == 1:
            work(sweep)
        else:
            _run_workers(sweep, jobs)
    finally:
        with claim_lock(sweep):
            # A worker that died in its last trial, or was stopped before it recorded it: the
            # summary shows that trial as interrupted, to be run again, not as running forever.
            release_dead_trials(study, sweep)
    if owed(study, sweep.trials):  # a worker stopped before the end (Ctrl-C, killed)
        raise KeyboardInterrupt
    return study  # its storage reads the workers' trials back on every query


def _run_workers(sweep: Sweep, jobs: int) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork after torch import is unsafe
    workers = [
        context.Process(target=_work_in_process, args=(replace(sweep, worker=i),))
        for i in range(jobs)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the workers too; a signal sent to this process alone
        # does not: those still running after a grace period are told to stop. Never twice at
        # once: a second Ctrl-C could cut short a worker's record of its trial.
        deadline = time.monotonic() + GRACE_S
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGINT)
        for worker in workers:
            worker.join(timeout=60)
        raise


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
        "study": sweep.study_name,
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
