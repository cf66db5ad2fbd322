"""Hyperparameter sweeps: worker processes that run trials of a study (nnlab/study.py) until it
has --trials of them. Each trial is an ordinary nnlab run under outputs/sweeps/<name>/trials/.
Each worker holds a lock file for its whole life: a RUNNING trial whose worker's lock can be
taken belongs to a dead worker, and is run again, whenever and however that worker died."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from nnlab import compat, locks
from nnlab.errors import UserError, choice_error
from nnlab.search_space import overrides_of
from nnlab.study import (
    BEST,
    DIRECTIONS,
    PRUNERS,
    SAMPLERS,
    TRIALS,
    WORKERS,
    Sweep,
    budget_lock,
    open_study,
    owed,
    prepare,
    storage_of,
)

# -- dead workers -----------------------------------------------------------------------------
_WORKER = re.compile(r"^([A-Za-z0-9_.-]+):(\d+)(?::([0-9a-f]+))?$")  # host:pid[:token]


@contextlib.contextmanager
def _worker_lock(sweep: Sweep) -> Iterator[str]:
    """Hold this worker's lock file for its whole life; yields the id its trials carry. The
    kernel drops an flock when its process dies, even by SIGKILL, so 'can the lock be taken'
    tells a dead worker from a live one without PIDs, timing or heartbeats. The token keeps a
    reused PID from looking like the dead worker that had it."""
    folder = sweep.directory / WORKERS
    folder.mkdir(parents=True, exist_ok=True)
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    path = folder / _lock_name(worker)
    partial = path.with_name(path.name + ".new")
    with open(partial, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        # The file takes its real name only once locked: never seen unlocked while we live.
        partial.replace(path)
        try:
            yield worker
        finally:
            path.unlink(missing_ok=True)  # still locked: nobody mistakes us for dead meanwhile


def _lock_name(worker: str) -> str:
    return worker.replace(":", "-") + ".lock"


def _dead(sweep: Sweep, worker: Any) -> bool:
    """Whether the worker that holds a RUNNING trial is dead. Call it under the budget lock."""
    if worker is None:
        # A worker names itself on its trial right after asking for it, both under the budget
        # lock we hold: only a worker killed in between leaves a nameless RUNNING trial. With
        # an RDB storage the trial may be a worker's on another machine: left alone.
        return not sweep.storage
    match = _WORKER.match(str(worker))
    if not match or match.group(1) != socket.gethostname():
        return False  # another machine's worker (or not nnlab's): only it knows
    # A worker from before lock files (host:pid) left none, nor did a dead worker that cleaned
    # up: a missing lock file is a dead worker.
    return locks.is_free(sweep.directory / WORKERS / _lock_name(str(worker)))


def release_dead_trials(study: Any, sweep: Sweep) -> int:
    """Mark the RUNNING trials of dead workers on this machine as interrupted failures and queue
    their points again, exactly once each: so a resumed sweep runs them again. Call it under
    the budget lock; trials of live workers, here or elsewhere, are left."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    released = 0
    for trial in trials:
        if trial.state == TrialState.RUNNING and _dead(sweep, trial.user_attrs.get("worker")):
            # Optuna sets user attributes only through a live Trial, and this one's process is
            # gone: the one write through the study's storage.
            compat.set_trial_user_attr(study, trial, "interrupted", True, lambda: storage_of(sweep))
            _requeue(study, trial.number, trial.params, retried)
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            released += 1
    return released


def _requeue(study: Any, number: int, params: dict[str, Any], retried: set[Any]) -> None:
    # The retry names the trial it repeats, so a release cut short (the releaser killed before
    # its tell) and done again does not queue the point twice.
    if number not in retried:
        study.enqueue_trial(params, user_attrs={"retry_of": number})


def _reap_lock_files(sweep: Sweep) -> None:
    """Remove the lock files dead workers on this machine left (call it under the budget lock)."""
    folder = sweep.directory / WORKERS
    mine = socket.gethostname() + "-"
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name.startswith(mine) and path.name.endswith(".lock") and locks.is_free(path):
            path.unlink(missing_ok=True)


# -- one worker -------------------------------------------------------------------------------
def work(sweep: Sweep) -> None:
    """Run trials until the study has `sweep.trials` of them; safe to run in many processes."""
    import optuna
    from optuna.trial import TrialState

    if sweep.threads:
        import torch

        torch.set_num_threads(sweep.threads)
    study = open_study(sweep)
    with _worker_lock(sweep) as me:
        while True:
            with budget_lock(sweep):
                release_dead_trials(study, sweep)  # a worker that died mid-sweep
                if owed(study, sweep.trials) == 0:
                    return
                trial = study.ask(sweep.space)
                trial.set_user_attr("worker", me)
            try:
                value = _objective(sweep, trial)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except KeyboardInterrupt:
                trial.set_user_attr("interrupted", True)
                _requeue(study, trial.number, trial.params, set())
                study.tell(trial, state=TrialState.FAIL)  # a resumed sweep runs it again
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


def run(sweep: Sweep, jobs: int, study: Any = None) -> Any:
    """Run the sweep with `jobs` worker processes; returns the study. `study`: what prepare()
    returned, when the caller prepared the sweep already."""
    import multiprocessing

    study = study if study is not None else prepare(sweep)
    with budget_lock(sweep):
        release_dead_trials(study, sweep)  # a killed run of this sweep: run its trials again
        _reap_lock_files(sweep)
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
    with budget_lock(sweep):
        # A worker that died in its last trial: the summary shows that trial as interrupted,
        # to be run again, rather than running forever.
        release_dead_trials(study, sweep)
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
