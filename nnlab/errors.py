"""Errors nnlab reports to the user as a message and exit code 2 (bad input), never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: the CLI prints the message and exits with code 2."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def choice_error(what: str, value: object, choices: Iterable[str]) -> UserError:
    """The standard 'unknown X' error: names the bad value, the valid choices, the closest one."""
    choices = sorted(str(c) for c in choices)
    return UserError(
        f"Unknown {what} '{value}'. Valid choices: {', '.join(choices)}."
        + did_you_mean(str(value), choices)
    )
