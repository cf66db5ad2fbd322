"""Hyperparameter sweeps: Optuna studies over Hydra overrides, in parallel worker processes.

The search space is written in Hydra's override grammar (`optimizer=choice(sgd,adam)`,
`optimizer.lr=tag(log,interval(1e-4,1e-1))`, `model.hidden=range(64,512,step=64)`); every other
override is fixed. Each trial is an ordinary nnlab run under outputs/sweeps/<name>/trials/.
The study lives in Optuna storage (a journal file by default, or any RDB URL), so workers on one
or many machines share it, and running the same command again resumes it.

A sweep's identity is its search space: the space (distributions, fixed overrides, metric,
direction) is stored with the study and in outputs/sweeps/<name>/space.yaml, and a command whose
space differs from the stored one is refused rather than mixed into it. A sweep directory (its
trials/ and best.yaml) belongs to one study. Each worker holds a lock file for its whole life;
a RUNNING trial whose worker's lock can be taken belongs to a dead worker and is run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import math
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nnlab import compat, locks
from nnlab.errors import UserError, choice_error, did_you_mean

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
DIRECTIONS = ("maximize", "minimize")
JOURNAL = "journal.log"
TRIALS = "trials"
BEST = "best.yaml"
SPACE = "space.yaml"  # the search space and the study this directory belongs to
WORKERS = "workers"  # one lock file per live worker process
SPACE_ATTR = "nnlab.space"  # the study user attribute holding the search space
IDENTITY = ("distributions", "fixed", "metric", "direction")  # what makes two searches the same


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
    swept: list[str] = field(default_factory=list)  # the swept overrides as typed (messages)
    resume: bool = False  # continue an existing study only; never start a new one

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


# -- storage URLs in messages -----------------------------------------------------------------
# user:password@ in a URL (with or without scheme://), for what SQLAlchemy cannot parse; greedy
# up to the last '@', since a password may hold an unescaped '@' but a host never does.
_USERINFO = re.compile(r"^((?:[\w+.-]+://|(?!.*://))[^:/@\s]*:)(.*)@")
# A password passed as a query parameter (?password=...), which SQLAlchemy does not hide.
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd)=)([^&#\s]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The storage URL with its password replaced by ***: for everything printed or logged."""
    try:
        from sqlalchemy.engine import make_url

        masked = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL, or no SQLAlchemy: the pattern below does it
        masked = url
    # Also after SQLAlchemy: it splits 'user:p@ss@host' at the first '@' and shows 'ss'.
    masked = _USERINFO.sub(r"\1***@", masked, count=1)
    return _QUERY_SECRET.sub(r"\1***", masked)


def scrub(text: str, url: str | None) -> str:
    """`text` (a driver's error, say) with the storage URL masked and its password, as typed or
    percent-decoded, replaced by ***."""
    if not url:
        return text
    text = text.replace(url, mask_url(url))
    secrets = {m.group(2) for m in _QUERY_SECRET.finditer(url)}
    match = _USERINFO.match(url)
    if match:
        secrets.add(match.group(2))
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        secrets.add(make_url(url).password or "")
    for secret in sorted(secrets - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _where(sweep: Sweep) -> str:
    """The study's storage, fit to print: the masked URL, or the sweep's journal file."""
    return mask_url(sweep.storage) if sweep.storage else str(sweep.directory / JOURNAL)


def _storage_id(sweep: Sweep) -> str:
    # The journal as the directory's own, not by path: --output-dir spelled another way
    # (absolute, relative) is the same storage.
    return mask_url(sweep.storage) if sweep.storage else JOURNAL


# -- the study --------------------------------------------------------------------------------
class _JournalLock:
    """The journal's writer lock as an flock: the kernel drops it when its holder dies, even by
    SIGKILL. Optuna's default (a symlink) outlives a killed holder and stalls every other
    process for its 30 s grace period. Everything that writes the journal is nnlab's."""

    def __init__(self, journal: Path) -> None:
        self._path = journal.with_name(journal.name + ".flock")
        self._handle: Any = None

    def acquire(self) -> bool:
        self._handle = open(self._path, "a")  # noqa: SIM115 - closed by release()
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing drops the lock


def _storage(sweep: Sweep) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if sweep.storage:
        return optuna.storages.get_storage(sweep.storage)
    sweep.directory.mkdir(parents=True, exist_ok=True)
    journal = sweep.directory / JOURNAL
    backend = JournalFileBackend(str(journal), lock_obj=_JournalLock(journal))  # type: ignore
    return JournalStorage(backend)


def open_study(sweep: Sweep) -> Any:
    """The sweep's study; a new one only when none of that name exists and this is no --resume."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
        if sweep.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        storage = _storage(sweep)
        names = optuna.get_all_study_names(storage)
        if sweep.study_name in names:
            study = optuna.load_study(study_name=sweep.study_name, storage=storage, pruner=pruner)
        else:
            _may_create(sweep, names)
            study = optuna.create_study(
                study_name=sweep.study_name,
                storage=storage,
                pruner=pruner,
                direction=sweep.direction,
                load_if_exists=True,  # another worker or machine may create it first
            )
    except UserError:
        raise
    except ValueError as err:  # e.g. the stored study optimizes the other direction
        raise UserError(
            f"Cannot use study '{sweep.study_name}': {scrub(str(err), sweep.storage)}"
        ) from None
    except Exception as err:  # a bad storage URL, an unreachable database, a missing driver
        why = " ".join(scrub(f"{type(err).__name__}: {err}", sweep.storage).split())
        raise UserError(f"Cannot open the study storage {_where(sweep)!r}: {why}") from None
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


def _may_create(sweep: Sweep, names: list[str]) -> None:
    """Refuse to create the study where that would be a mistake: --resume of a study that is not
    there, or a second study in a directory whose journal already holds one."""
    if sweep.resume:
        known = sorted({*names, *_sweep_names(sweep)})
        raise UserError(
            f"Nothing to resume: there is no study '{sweep.study_name}' in {_where(sweep)}. "
            f"Known sweeps and studies: {', '.join(known) or 'none yet'}."
            + did_you_mean(sweep.study_name, known)
            + " Leave out --resume to start a new sweep."
        )
    if not sweep.storage and names:  # the journal predates space.yaml (see _check_directory)
        raise _other_study(sweep, names[0], _storage_id(sweep))


def _sweep_names(sweep: Sweep) -> list[str]:
    root = Path(sweep.output_dir) / "sweeps"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _counts_toward_budget(trial: Any) -> bool:
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get("interrupted", False)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def owed(study: Any, total: int) -> int:
    """Trials still to run: interrupted ones are retried, everything else counts."""
    return max(0, total - sum(_counts_toward_budget(t) for t in study.get_trials(deepcopy=False)))


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


# -- the search space's identity --------------------------------------------------------------
def space_record(sweep: Sweep) -> dict[str, Any]:
    """What defines the search (IDENTITY), plus the settings `--resume` reuses."""
    from optuna.distributions import distribution_to_json

    return {
        "swept": list(sweep.swept),
        "distributions": {k: json.loads(distribution_to_json(d)) for k, d in sweep.space.items()},
        "fixed": list(sweep.fixed),
        "metric": sweep.metric,
        "direction": sweep.direction,
        "trials": sweep.trials,
        "sampler": sweep.sampler,
        "pruner": sweep.pruner,
    }


def prepare(sweep: Sweep) -> Any:
    """Open the sweep's study, refusing a study or directory that holds another search before
    anything is written; then store the search space with the study and in space.yaml."""
    _check_directory(sweep)
    study = open_study(sweep)
    given = space_record(sweep)
    _refuse_other_space(sweep, _stored_record(study), given)
    with _budget_lock(sweep):  # a start of the same sweep elsewhere on this machine may race us
        _refuse_other_space(sweep, _stored_record(study), given)
        if study.user_attrs.get(SPACE_ATTR) != given:
            study.set_user_attr(SPACE_ATTR, given)
        _write_space_file(sweep, given)
    return study


def stored_settings(
    name: str, study: str | None, storage: str | None, output_dir: str
) -> tuple[dict[str, Any], list[str]]:
    """For `--resume` without a search space: the stored study's settings (metric, direction,
    trials, sampler, pruner) and its overrides, swept then fixed."""
    probe = Sweep(
        name=name,
        space={},
        grid=None,
        fixed=[],
        trials=1,
        metric="",
        direction=DIRECTIONS[0],
        storage=storage,
        study=study,
        output_dir=output_dir,
        resume=True,
    )
    _check_directory(probe)
    record = _stored_record(open_study(probe))
    if not record or not record.get("swept"):
        raise UserError(
            f"Study '{probe.study_name}' ({_where(probe)}) was started before nnlab stored search "
            f"spaces, so --resume cannot rebuild it: give its search space on the command line, "
            f"as first typed."
        )
    settings = {k: record[k] for k in ("metric", "direction", "trials", "sampler", "pruner")}
    return {k: v for k, v in settings.items() if v is not None}, [
        *record["swept"],
        *record["fixed"],
    ]


def _check_directory(sweep: Sweep) -> None:
    """A sweep directory (trials/, best.yaml) belongs to the one study named in its space.yaml."""
    import yaml

    if sweep.resume and not sweep.storage and not (sweep.directory / JOURNAL).exists():
        _may_create(sweep, [])  # nothing to resume: say so without creating the journal
    path = sweep.directory / SPACE
    if not path.exists():
        return
    try:
        owner = yaml.safe_load(path.read_text())
        study, storage = owner["study"], owner["storage"]
    except (OSError, ValueError, TypeError, KeyError) as err:  # yaml's errors are ValueErrors
        raise UserError(
            f"Cannot read {path} ({type(err).__name__}), which names the study this sweep "
            f"directory belongs to. Restore it, or choose another --name."
        ) from None
    if (study, storage) != (sweep.study_name, _storage_id(sweep)):
        raise _other_study(sweep, str(study), str(storage))


def _other_study(sweep: Sweep, study: str, storage: str) -> UserError:
    def shown(storage: str) -> str:
        return f"the directory's {JOURNAL}" if storage == JOURNAL else storage

    return UserError(
        f"{sweep.directory} holds the trials and best.yaml of study '{study}' ({shown(storage)});"
        f" study '{sweep.study_name}' ({shown(_storage_id(sweep))}) cannot share them. Give it "
        f"its own directory with --name {_free_name(sweep)}, or give the --study and --storage "
        f"of '{study}' to continue it. Nothing was written."
    )


def _stored_record(study: Any) -> dict[str, Any] | None:
    """The study's stored search space; for a study from before nnlab stored one, what its
    trials tell; None for a new study."""
    record = study.user_attrs.get(SPACE_ATTR)
    if record is None:
        return _inferred_record(study)
    texts = (record.get(k) for k in ("swept", "fixed")) if isinstance(record, dict) else [None]
    if not (
        isinstance(record, dict)
        and isinstance(record.get("distributions"), dict)
        and all(isinstance(t, list) and all(isinstance(s, str) for s in t) for t in texts)
    ):
        raise UserError(
            f"Study '{study.study_name}' holds a search space nnlab cannot read (user attribute "
            f"{SPACE_ATTR}); it was not written by nnlab. Choose another --name or --study."
        )
    return record


def _inferred_record(study: Any) -> dict[str, Any] | None:
    from optuna.distributions import distribution_to_json

    trials = [t for t in study.get_trials(deepcopy=False) if t.distributions]
    if not trials:
        return None
    distributions: dict[str, Any] = {}
    for trial in trials:
        for key, value in trial.distributions.items():
            distributions[key] = json.loads(distribution_to_json(value))
    fixed = None  # unknown unless a trial recorded its overrides: [*fixed, *params]
    for trial in trials:
        overrides = trial.user_attrs.get("overrides")
        if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
            fixed = overrides[: len(overrides) - len(trial.params)]
            break
    direction = study.direction.name.lower()
    return {"swept": [], "distributions": distributions, "fixed": fixed, "direction": direction}


def _refuse_other_space(sweep: Sweep, stored: dict[str, Any] | None, given: dict[str, Any]) -> None:
    if stored is None:
        return
    ours, theirs = given["distributions"], stored["distributions"]
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if stored.get("fixed") is not None and sorted(stored["fixed"]) != sorted(given["fixed"]):
        differ.append("the fixed overrides")
    differ += [k for k in ("metric", "direction") if stored.get(k) not in (None, given[k])]
    if not differ:
        return
    raise UserError(
        f"Sweep '{sweep.name}' already has study '{sweep.study_name}' ({_where(sweep)}) with "
        f"another search space, and one study must not mix two searches. Stored: "
        f"{_describe(stored)}. Given: {_describe(given)}. They differ in {', '.join(differ)}. "
        f"To start a new search, choose another name (for example --name {_free_name(sweep)}); "
        f"to continue the stored one, run '{_resume_command(sweep)}' with no search space, or "
        f"give exactly the stored space. Nothing was written."
    )


def _describe(record: dict[str, Any]) -> str:
    swept = record.get("swept") or [
        f"{k}={v.get('name', '?') if isinstance(v, dict) else '?'}"
        f"{json.dumps(v.get('attributes') if isinstance(v, dict) else v)}"
        for k, v in record["distributions"].items()
    ]
    fixed = record.get("fixed")
    fixed_text = "unknown" if fixed is None else " ".join(fixed) or "none"
    aim = f"{record.get('direction') or '?'} {record.get('metric') or '(metric unknown)'}"
    return f"{' '.join(swept)}, fixed: {fixed_text}, {aim}"


def _free_name(sweep: Sweep) -> str:
    root = Path(sweep.output_dir) / "sweeps"
    return next(
        f"{sweep.name}-{n}" for n in itertools.count(2) if not (root / f"{sweep.name}-{n}").exists()
    )


def _resume_command(sweep: Sweep) -> str:
    words = ["nnlab sweep --name", sweep.name, "--resume"]
    if sweep.study:
        words += ["--study", sweep.study]
    if sweep.storage:
        words += ["--storage", mask_url(sweep.storage)]
    if Path(sweep.output_dir) != Path("outputs"):
        words += ["--output-dir", sweep.output_dir]
    return " ".join(words)


def _write_space_file(sweep: Sweep, record: dict[str, Any]) -> None:
    import yaml

    from nnlab import runs

    content = {"study": sweep.study_name, "storage": _storage_id(sweep), **record}
    with runs.written_whole(sweep.directory / SPACE) as tmp:
        tmp.write_text(yaml.safe_dump(content, sort_keys=False))


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
            compat.set_trial_user_attr(study, trial, "interrupted", True, lambda: _storage(sweep))
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
            with _budget_lock(sweep):
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
    with _budget_lock(sweep):
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
    with _budget_lock(sweep):
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
