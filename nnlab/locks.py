"""Advisory file locks that tell a live process from a dead one: the kernel drops a process's
flock when it dies, however it dies (SIGKILL, the OOM killer), so no PID check or timeout is
needed. Run directories (one writer per run) and sweep workers use them."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


def try_lock(fd: int, exclusive: bool = True) -> bool:
    """Take the lock on an open file without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    return True


def is_free(path: Path) -> bool:
    """Whether no live process holds the lock file at `path` (a missing file is free). The probe
    takes a shared lock for an instant and drops it; a link or unreadable file counts as held,
    so nothing is taken over that nnlab did not make."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        return try_lock(fd, exclusive=False)
    finally:
        os.close(fd)
