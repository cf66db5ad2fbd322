"""Errors nnlab reports to the user as a message, never a traceback: bad input (exit code 2),
writes the machine refuses and failed training (exit code 1), interrupted training (130)."""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable
from pathlib import Path

# Writes the machine refused: a full disk or quota, a read-only or forbidden path.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})


class Notice(UserWarning):
    """Advice for the user (gradients vanish, a saved config lacked keys, annotations were
    skipped): the CLI prints it as one plain line, without Python's source excerpt."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message and exits with code 2."""


class TrainingError(Exception):
    """Training itself failed (not the user's input): exit code 1, details in the run directory."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training; the run keeps checkpoints/last.ckpt of its last
    complete epoch and can be resumed. A KeyboardInterrupt, so whatever stops on Ctrl-C stops."""

    def __init__(self, run_dir: Path, epochs_done: int) -> None:
        super().__init__(f"training interrupted after {epochs(epochs_done)}")
        self.run_dir = run_dir
        self.epochs_done = epochs_done


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close. Case does not
    count against a choice: model=CNNN is close to cnn."""
    named = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(named), n=1, cutoff=0.5)
    return f" Did you mean '{named[close[0]]}'?" if close else ""


def choice_error(what: str, value: object, choices: Iterable[str]) -> UserError:
    """The standard 'unknown X' error: names the bad value, the valid choices, the closest one."""
    choices = sorted(str(c) for c in choices)
    return UserError(
        f"Unknown {what} '{value}'. Valid choices: {', '.join(choices)}."
        + did_you_mean(str(value), choices)
    )


def storage_failure(err: BaseException) -> str | None:
    """What the storage refused ('No space left on device: <file>'), when `err` is such a
    refusal; None for any other error."""
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        # a copy or a rename names its destination second: the file being written
        where = err.filename2 or err.filename
        return f"{err.strerror}: {where}" if where else str(err.strerror)
    return None


def epochs(count: int) -> str:
    """'1 complete epoch', '3 complete epochs'."""
    return f"{count} complete epoch" + "s" * (count != 1)
