"""A sweep's Optuna study: where it is stored, how it is opened, what it owes, and its identity
(the search space stored with it, so that a different search under the same name is refused
rather than mixed into it). A sweep directory (its trials/ and best.yaml) belongs to one study."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import os
import socket
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nnlab.errors import UserError, did_you_mean
from nnlab.rdb_storage import open_rdb
from nnlab.storage_urls import mask_url, scrub

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
HEARTBEAT_ATTR = "nnlab.heartbeat"  # the study user attribute: its workers' heartbeat, seconds
HEARTBEAT_S = 60  # the heartbeat of a new study in an RDB storage, unless --heartbeat
MAX_BEAT_S = 3600  # the longest heartbeat (--heartbeat's limit)


@dataclass
class Sweep:
    """Everything a worker needs to take part in a sweep (picklable: workers are processes)."""

    name: str
    space: dict[str, Any]  # key → optuna distribution
    grid: dict[str, list[Any]] | None  # key → values, for the grid sampler
    fixed: list[str]
    trials: int
    metric: str  # "" until sweep.fit_to_task: the task's own
    direction: str  # "" until sweep.fit_to_task: the task's own, or guessed from the name
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
    heartbeat: int | None = None  # RDB storages: seconds between a worker's heartbeats; None:
    # the study's own (HEARTBEAT_S for a new one). A trial silent for twice that is run again.

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) / "sweeps" / self.name

    @property
    def study_name(self) -> str:
        return self.study or self.name


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


def storage_of(sweep: Sweep) -> Any:
    """The Optuna storage the sweep's study lives in (its journal file unless --storage)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if sweep.storage:
        return _rdb(sweep.storage, sweep.heartbeat or HEARTBEAT_S)
    sweep.directory.mkdir(parents=True, exist_ok=True)
    journal = sweep.directory / JOURNAL
    backend = JournalFileBackend(str(journal), lock_obj=_JournalLock(journal))  # type: ignore
    return JournalStorage(backend)


@functools.lru_cache(maxsize=8)
def _rdb(url: str, heartbeat: int) -> Any:
    # One storage per database and process: workers reach it for every claim and heartbeat.
    return open_rdb(url, heartbeat_interval=heartbeat)


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
        with quiet_heartbeat():
            storage = storage_of(sweep)
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
    # with the worker index and with the trials the study already has; in a database that other
    # machines share (where worker indexes repeat), with the machine and process too.
    seed = sweep.seed + 1000 * sweep.worker + len(study.get_trials(deepcopy=False))
    if sweep.storage:
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    seed %= 2**32  # numpy's limit
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


def interrupted(trial: Any, retried: set[Any]) -> bool:
    """Whether a trial stopped before its end, to be run again: marked so (Ctrl-C, a dead
    worker on this machine), or failed and queued again (its worker's heartbeat stopped).
    `retried`: the numbers of the trials queued again (the retries' retry_of)."""
    from optuna.trial import TrialState

    if trial.state != TrialState.FAIL:
        return False
    return bool(trial.user_attrs.get("interrupted", False)) or trial.number in retried


def retried_numbers(trials: list[Any]) -> set[Any]:
    """The numbers of the trials whose points were queued again (see interrupted)."""
    return {t.user_attrs.get("retry_of") for t in trials} - {None}


def owed(study: Any, total: int) -> int:
    """Trials still to run: interrupted ones are retried, everything else counts (a RUNNING
    trial included: its worker, or the one that retries it, ends it)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    counted = (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
        and not interrupted(t, retried)
        for t in trials
    )
    return max(0, total - sum(counted))


def claim_lock(sweep: Sweep) -> contextlib.AbstractContextManager[None]:
    """The lock under which trials are counted and claimed, shared by every worker of the study
    on every machine (nnlab/claims.py says how, and why that makes --trials exact)."""
    from nnlab.claims import claim_lock as lock

    return lock(sweep.directory, sweep.storage, sweep.study_name)


@contextlib.contextmanager
def quiet_heartbeat() -> Iterator[None]:
    """Optuna warns that its heartbeat is experimental and meant for Study.optimize: nnlab runs
    ask/tell loops and beats for its trials itself (nnlab/recovery.py)."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        yield


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


def prepare(sweep: Sweep) -> tuple[Sweep, Any]:
    """Open the sweep's study, refusing a study or directory that holds another search before
    anything is written; then store the search space with the study and in space.yaml. Returns
    the sweep with the study's heartbeat, and the study."""
    _check_directory(sweep)
    study = open_study(sweep)
    settled = _with_heartbeat(sweep, study)
    if settled.heartbeat != (sweep.heartbeat or HEARTBEAT_S):  # the study's: open it with that
        study = open_study(settled)
    given = space_record(settled)
    _refuse_other_space(settled, _stored_record(study), given)
    with claim_lock(settled):  # a start of the same sweep elsewhere may race us
        _refuse_other_space(settled, _stored_record(study), given)
        if study.user_attrs.get(SPACE_ATTR) != given:
            study.set_user_attr(SPACE_ATTR, given)
        _with_heartbeat(settled, study)  # refuses one another start stored meanwhile
        if settled.storage and _stored_heartbeat(study) is None:
            study.set_user_attr(HEARTBEAT_ATTR, settled.heartbeat)
        _write_space_file(settled, given)
    return settled, study


def _with_heartbeat(sweep: Sweep, study: Any) -> Sweep:
    """The sweep with the heartbeat its study's workers use: every worker of a study must beat
    as often as the others expect, so the first start's --heartbeat is stored with the study."""
    if not sweep.storage:
        return sweep
    stored = _stored_heartbeat(study)
    if stored is None:
        return replace(sweep, heartbeat=sweep.heartbeat or HEARTBEAT_S)
    if sweep.heartbeat not in (None, stored):
        raise _other_heartbeat(sweep, stored)
    return replace(sweep, heartbeat=stored)


def _stored_heartbeat(study: Any) -> int | None:
    """The study's heartbeat; None when it has none (or one nnlab did not write: replaced)."""
    stored = study.user_attrs.get(HEARTBEAT_ATTR)
    valid = isinstance(stored, int) and not isinstance(stored, bool) and 0 < stored <= MAX_BEAT_S
    return stored if valid else None


def _other_heartbeat(sweep: Sweep, stored: Any) -> UserError:
    return UserError(
        f"--heartbeat {sweep.heartbeat}: study '{sweep.study_name}' ({_where(sweep)}) has its "
        f"workers beat every {stored} s, set when it started, and all its workers must agree "
        f"(a worker beating less often would be taken for dead). Leave --heartbeat out, or give "
        f"--heartbeat {stored}."
    )


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
        f"to continue the stored one, run '{resume_command(sweep)}' with no search space, or "
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


def resume_command(sweep: Sweep, jobs: int = 1) -> str:
    """The command that continues the sweep as stored, quoted for a shell."""
    import shlex

    words = ["nnlab", "sweep", "--name", sweep.name, "--resume"]
    if jobs > 1:
        words += ["--jobs", str(jobs)]
    if sweep.study:
        words += ["--study", sweep.study]
    if sweep.storage:
        words += ["--storage", mask_url(sweep.storage)]
    if Path(sweep.output_dir) != Path("outputs"):
        words += ["--output-dir", sweep.output_dir]
    return shlex.join(words)


def _write_space_file(sweep: Sweep, record: dict[str, Any]) -> None:
    import yaml

    from nnlab import runs

    content = {"study": sweep.study_name, "storage": _storage_id(sweep), **record}
    sweep.directory.mkdir(parents=True, exist_ok=True)
    with runs.written_whole(sweep.directory / SPACE) as tmp:
        tmp.write_text(yaml.safe_dump(content, sort_keys=False))
