"""The claim lock: what makes `--trials` exact. A worker counts the trials a study still owes,
asks for one and names itself on it as one step under this lock, so two workers can never both
take the last slot. The lock is held by one process among all that share the study's storage:

- the journal file (one machine): a file lock in the sweep directory;
- SQLite: a file lock beside the database file, which every process that shares the database
  opens (SQLite's own locking needs that same file system);
- PostgreSQL: a transaction-level advisory lock on the database server, one per study.

Race-free because the count can only grow under the lock: outside it a worker only finishes its
own RUNNING trial (which counts both before and after) or gives it back (Ctrl-C: the count
shrinks, so a later claim runs its retry); trials are created, and those of dead workers
released, only under the lock. An OS lock and a server-side transaction both end with their
holder, however it dies (SIGKILL, a closed connection): a dead worker never blocks the others.
Other databases fall back to the sweep directory's lock: exact on one machine only."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = "budget.lock"  # in the sweep directory (journal storage, other databases)
BESIDE_SQLITE = ".nnlab-claims"  # the suffix of the lock file beside an SQLite database


def is_shared(url: str) -> bool:
    """Whether the claim lock of the RDB storage at `url` is held across machines."""
    return _backend(url) == "postgresql" or _sqlite_file(url) is not None


@contextlib.contextmanager
def claim_lock(directory: Path, url: str | None, study: str) -> Iterator[None]:
    """Hold the study's claim lock. `url`: the RDB storage's, or None for the sweep's journal in
    `directory`; `study`: the study's name (PostgreSQL locks one study, not the database)."""
    if url is not None and _backend(url) == "postgresql":
        with _advisory_lock(_engine(url), study):
            yield
        return
    path = _sqlite_file(url) if url is not None else None
    if path is None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_FILE
    else:
        path = path.with_name(path.name + BESIDE_SQLITE)
    with _file_lock(path):
        yield


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(engine: Any, study: str) -> Iterator[None]:
    # pg_advisory_xact_lock waits for the lock and holds it until this transaction ends: on
    # leaving, on an error (rollback), or when the server sees the connection close. The trials
    # themselves are written meanwhile through the storage's own connections.
    from sqlalchemy import text

    digest = hashlib.blake2b(f"nnlab.sweep:{study}".encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)  # the lock's bigint name
    with engine.connect() as connection, connection.begin():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> Any:
    """One engine (and its pool of connections) per database and process, for the lock."""
    import sqlalchemy

    from nnlab.storage_urls import rdb_url

    return sqlalchemy.create_engine(rdb_url(url), pool_pre_ping=True)


def _url(url: str) -> Any:
    from sqlalchemy.engine import make_url

    return make_url(url)


def _backend(url: str) -> str:
    return str(_url(url).get_backend_name())


def _sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL; None for another database or an in-memory one."""
    if _backend(url) != "sqlite":
        return None
    database = _url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None  # in memory (nothing to share), or a URI whose file is the driver's to find
    return Path(database)
