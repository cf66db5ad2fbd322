"""Trials of dead workers, found and run again with the same parameters, exactly once each.

- The journal storage (one machine): each worker holds a lock file for its whole life; a RUNNING
  trial whose worker's lock can be taken belongs to a dead worker, whenever and however it died.
- An RDB storage (many machines): Optuna's heartbeat. A worker records a heartbeat for its trial
  every `heartbeat` seconds; a trial silent for twice that is failed by whichever worker looks
  next, and queued again. Lock files cannot serve here: another machine's are out of reach.

Everything here runs under the claim lock (nnlab/claims.py), which is what makes "once" true."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from nnlab import compat, locks
from nnlab.study import WORKERS, Sweep, quiet_heartbeat, storage_of

_WORKER = re.compile(r"^([A-Za-z0-9_.-]+):(\d+)(?::([0-9a-f]+))?$")  # host:pid[:token]
BEAT_ATTR = "heartbeat"  # on a trial: its worker beats every that many seconds (RDB storages)


@contextlib.contextmanager
def worker_lock(sweep: Sweep) -> Iterator[str]:
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
    """Whether the worker that holds a RUNNING trial is dead, by its lock file (journal), or
    because it has no name (any storage whose claim lock all workers share)."""
    if worker is None:
        # A worker names itself on its trial right after asking for it, both under the claim
        # lock we hold: only a worker killed in between leaves a nameless RUNNING trial.
        return claims_shared(sweep)
    if sweep.storage:
        return False  # its heartbeat tells (fail_stale)
    match = _WORKER.match(str(worker))
    if not match or match.group(1) != socket.gethostname():
        return False  # not nnlab's, or from another machine: only it knows
    # A worker from before lock files (host:pid) left none, nor did a dead worker that cleaned
    # up: a missing lock file is a dead worker.
    return locks.is_free(sweep.directory / WORKERS / _lock_name(str(worker)))


def claims_shared(sweep: Sweep) -> bool:
    """Whether every worker of the study claims under this one lock (see nnlab/claims.py)."""
    from nnlab.claims import is_shared

    return not sweep.storage or is_shared(sweep.storage)


def release_dead_trials(study: Any, sweep: Sweep) -> int:
    """Fail the RUNNING trials of dead workers and queue their points again, exactly once each,
    so that they run again; trials of live workers are left. Call it under the claim lock."""
    from optuna.trial import TrialState

    if sweep.storage:
        fail_stale(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    released = 0
    for trial in trials:
        if trial.state == TrialState.RUNNING and _dead(sweep, trial.user_attrs.get("worker")):
            # Optuna sets user attributes only through a live Trial, and this one's process is
            # gone: the one write through the study's storage.
            compat.set_trial_user_attr(study, trial, "interrupted", True, lambda: storage_of(sweep))
            requeue(study, trial.number, trial.params, retried)
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            released += 1
        elif _stale(trial) and trial.number not in retried:
            # Failed by fail_stale (here, or by a worker killed before it queued the retry).
            requeue(study, trial.number, trial.params, retried)
            released += 1
    return released


def _stale(trial: Any) -> bool:
    """A trial whose worker stopped beating (or was stopped by Ctrl-C and died before queueing
    it again): a heartbeat worker's trial, failed with no error recorded (nnlab records one with
    every failure of its own)."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    return trial.state == TrialState.FAIL and BEAT_ATTR in attrs and "error" not in attrs


def requeue(study: Any, number: int, params: dict[str, Any], retried: set[Any]) -> None:
    """Queue trial `number`'s point to run again, unless it is queued already (in `retried`)."""
    # The retry names the trial it repeats, so a release cut short (the releaser killed before
    # its tell) and done again does not queue the point twice.
    if number not in retried:
        study.enqueue_trial(params, user_attrs={"retry_of": number})
        retried.add(number)


def reap_lock_files(sweep: Sweep) -> None:
    """Remove the lock files dead workers on this machine left (call it under the claim lock)."""
    folder = sweep.directory / WORKERS
    mine = socket.gethostname() + "-"
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name.startswith(mine) and path.name.endswith(".lock") and locks.is_free(path):
            path.unlink(missing_ok=True)


# -- heartbeats (RDB storages) ----------------------------------------------------------------
def fail_stale(study: Any) -> None:
    """Fail the RUNNING trials whose worker stopped beating (Optuna's fail_stale_trials)."""
    import optuna

    with quiet_heartbeat():
        optuna.storages.fail_stale_trials(study)


def first_beat(sweep: Sweep, study: Any, trial: Any) -> int:
    """Record the trial's first heartbeat (under the claim lock, before the worker names itself
    on it: a trial without a heartbeat is never found stale); returns its storage id."""
    storage = storage_of(sweep)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number
    )
    storage.record_heartbeat(trial_id)
    trial.set_user_attr(BEAT_ATTR, storage.get_heartbeat_interval())
    return int(trial_id)


@contextlib.contextmanager
def beating(sweep: Sweep, trial_id: int) -> Iterator[None]:
    """Record a heartbeat for the trial every interval while the body runs."""
    storage = storage_of(sweep)
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            # A beat lost to a database hiccup is made up at the next one; only a worker silent
            # for twice the interval loses its trial.
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name="nnlab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
