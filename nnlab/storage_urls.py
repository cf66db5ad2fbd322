"""Study storage URLs fit to print: their passwords never reach a terminal or a log."""

from __future__ import annotations

import contextlib
import importlib
import re

from nnlab.errors import UserError

# user:password@ in a URL (with or without scheme://), for what SQLAlchemy cannot parse; greedy
# up to the last '@', since a password may hold an unescaped '@' but a host never does.
_USERINFO = re.compile(r"^((?:[\w+.-]+://|(?!.*://))[^:/@\s]*:)(.*)@")
# A password passed as a query parameter (?password=...), which SQLAlchemy does not hide.
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd)=)([^&#\s]*)", re.IGNORECASE)
# postgresql:// or postgresql+<driver>://: SQLAlchemy's scheme, with the driver it names, if any.
_POSTGRES = re.compile(r"^postgresql(?:\+(\w+))?://", re.IGNORECASE)
# The PostgreSQL drivers nnlab picks for a plain postgresql:// URL, in that order: psycopg 3 is
# the one nnlab[postgres] installs; psycopg2 is what an older setup may have instead.
POSTGRES_DRIVERS = ("psycopg", "psycopg2")
POSTGRES_EXTRA = 'pip install "nnlab[postgres]"'


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


def rdb_url(url: str) -> str:
    """The URL to open an RDB storage with. A plain postgresql:// URL gets the driver that is
    installed (psycopg 3, else psycopg2) written into its scheme: SQLAlchemy's own default
    differs between its versions and would import a driver that may be missing. UserError, one
    line naming nnlab[postgres] and never the password, when no such driver can be imported."""
    match = _POSTGRES.match(url)
    named = match and match.group(1)
    if not match or (named and named.lower() not in POSTGRES_DRIVERS):
        return url  # not PostgreSQL, or another driver (pg8000...): SQLAlchemy loads it itself
    drivers = (named.lower(),) if named else POSTGRES_DRIVERS
    missing = []
    for driver in drivers:
        problem = _import_problem(driver)
        if problem is None:
            return f"postgresql+{driver}://{url[match.end() :]}"
        missing.append(problem)
    install = f"Install it with: {POSTGRES_EXTRA}"
    if drivers[0] != "psycopg":  # the URL asks for psycopg2 by name
        install = f"Install psycopg2-binary, or write postgresql:// and {POSTGRES_EXTRA}"
    raise UserError(
        f"Cannot open the study storage {mask_url(url)!r}: no PostgreSQL driver can be loaded "
        f"({'; '.join(missing)}). {install}"
    )


def _import_problem(module: str) -> str | None:
    """Why the driver module cannot be imported, in a few words; None when it can."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module or err.name is None:
            return f"{module} is not installed"
        return f"{module} needs {err.name}, which is not installed"
    except ImportError as err:  # installed but unusable, e.g. psycopg without a libpq
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"{module} cannot load: {first}"
    return None
